package bpf

import (
	"net/netip"
	"strings"
	"testing"
)

func TestEndpointKeyMapsIPv4(t *testing.T) {
	for _, tc := range []struct {
		ip   string
		want string
	}{
		{"10.1.2.3", "::ffff:10.1.2.3"},
		{"::ffff:10.1.2.3", "::ffff:10.1.2.3"},
		{"fd00::5", "fd00::5"},
	} {
		k := endpointKey(netip.MustParseAddr(tc.ip))
		if got := netip.AddrFrom16(k).String(); got != tc.want {
			t.Errorf("endpointKey(%s) = %s, want %s", tc.ip, got, tc.want)
		}
	}
}

func TestIsBelow(t *testing.T) {
	for _, tc := range []struct {
		dir  string
		want bool
	}{
		{"/sys/fs/bpf/patu", true},
		{"/sys/fs/bpf", true},
		{"/sys/fs/bpf/../bpfx", false},
		{"/sys/fs/bpfx/patu", false},
		{"/tmp/patu", false},
	} {
		if got := isBelow(tc.dir, "/sys/fs/bpf"); got != tc.want {
			t.Errorf("isBelow(%s) = %v, want %v", tc.dir, got, tc.want)
		}
	}
}

func TestCheckBPFFSSaysHowToFix(t *testing.T) {
	err := checkBPFFS(t.TempDir() + "/patu")
	if err == nil {
		t.Fatal("a temp dir passed as bpffs")
	}
	if !strings.Contains(err.Error(), "mount -t bpf bpf /sys/fs/bpf") {
		t.Errorf("error does not say how to fix it: %v", err)
	}
}

func TestReasonNamesAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	for r := redirectFallbackReason(0); r < redirectFallbackReasonFB_MAX; r++ {
		n := reasonName(r)
		if seen[n] {
			t.Errorf("reason %d shares the name %q", r, n)
		}
		seen[n] = true
	}
}
