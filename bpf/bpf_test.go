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

func TestReleaseAtLeast(t *testing.T) {
	for _, tc := range []struct {
		release string
		want    bool
	}{
		{"6.18.44-fc-v782", true},
		{"6.13.0", true},
		{"6.12.9-amd64", false},
		{"5.15.0-91-generic", false},
		{"7.0.1", true},
	} {
		got, err := releaseAtLeast(tc.release, 6, 13)
		if err != nil || got != tc.want {
			t.Errorf("releaseAtLeast(%q) = %v, %v; want %v", tc.release, got, err, tc.want)
		}
	}
	if _, err := releaseAtLeast("garbage", 6, 13); err == nil {
		t.Error("parsed a garbage release")
	}
}
