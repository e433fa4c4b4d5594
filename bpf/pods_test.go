package bpf

import (
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestPodRecordRoundTrip(t *testing.T) {
	p := Pod{
		ID:          strings.Repeat("a", MaxPodIDLen),
		Namespace:   "default",
		Name:        "web-0",
		UID:         "0b6c6f0e-1d2a-4b1b-9b54-2d1f1c0e9a11",
		Netns:       "/var/run/netns/cni-0b6c6f0e",
		IPs:         []netip.Addr{netip.MustParseAddr("10.42.0.7"), netip.MustParseAddr("fd00:42::7")},
		HostIfindex: 17,
		HostMAC:     net.HardwareAddr{2, 0, 0, 0, 0, 1},
		PodMAC:      net.HardwareAddr{2, 0, 0, 0, 0, 2},
		Cgroups:     []uint64{1234, 5678},
		NoRedirect:  true,
		NoXDP:       true,
		GROSet:      true,
		Source:      PodFromCNI | PodFromRuntime,
		Confirmed:   true,
		Created:     time.Unix(1700000000, 123),
	}
	k, v, err := encodePod(p)
	if err != nil {
		t.Fatal(err)
	}
	got := decodePod(k, v)
	if !reflect.DeepEqual(got, p) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, p)
	}
}

func TestPodRecordRefusesWhatItCannotHold(t *testing.T) {
	ok := Pod{ID: "abc"}
	for name, mut := range map[string]func(*Pod){
		"empty id":     func(p *Pod) { p.ID = "" },
		"long id":      func(p *Pod) { p.ID = strings.Repeat("a", MaxPodIDLen+1) },
		"too many ips": func(p *Pod) { p.IPs = make([]netip.Addr, MaxPodIPs+1) },
		"long name":    func(p *Pod) { p.Name = strings.Repeat("n", 65) },
		"long netns":   func(p *Pod) { p.Netns = "/" + strings.Repeat("n", 192) },
		"many cgroups": func(p *Pod) { p.Cgroups = make([]uint64, MaxPodCgroups+1) },
	} {
		p := ok
		mut(&p)
		if _, _, err := encodePod(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, err := encodePod(ok); err != nil {
		t.Errorf("minimal record refused: %v", err)
	}
}
