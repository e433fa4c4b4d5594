package integration

import (
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/netns"
)

// TestBigTCP: with patu load --big-tcp, registration gives each pod's
// interface the larger GSO size, and the packet path hands the other pod
// packets larger than 64 KiB, intact, IPv4 and IPv6.
func TestBigTCP(t *testing.T) {
	const size = 196608
	e := setup(t, "itg", 12, 2, packetPath, bpf.Options{BigTCP: size})
	a, b := e.net.Pods[0], e.net.Pods[1]
	for _, p := range []string{a.NetnsPath, b.NetnsPath} {
		err := netns.Do(p, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if got := l.Attrs().GSOMaxSize; got != size {
				t.Errorf("gso_max_size of eth0 in %s = %d, want %d", p, got, size)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// A bulk direction leaves the node by the peer's host veth: cut to
	// 64 KiB there, BIG TCP would be software GSO.
	for _, p := range []int{a.HostIfindex, b.HostIfindex} {
		err := e.net.Node.Do(func() error {
			l, err := netlink.LinkByIndex(p)
			if err != nil {
				return err
			}
			if got := l.Attrs().GSOMaxSize; got != size {
				t.Errorf("gso_max_size of host veth %s = %d, want %d", l.Attrs().Name, got, size)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for fam, ip := range families(b) {
		t.Run(fam, func(t *testing.T) {
			e.serve(b, addr(ip, 7030), "sink")
			l0 := e.local()
			res, err := e.client(a, time.Minute, "--connect", addr(ip, 7030).String(), "--mode", "stream",
				"--bytes", "268435456", "--seed", "30")
			requireClean(t, res, err)
			l1 := e.local()
			pkts, bytes, big := l1.RedirectPackets-l0.RedirectPackets, l1.RedirectBytes-l0.RedirectBytes, l1.RedirectBig-l0.RedirectBig
			t.Logf("%s: %d packets (%d over 64 KiB), %d bytes", fam, pkts, big, bytes)
			if bytes < uint64(res.Bytes) {
				t.Errorf("the packet path carried %d bytes of %d", bytes, res.Bytes)
			}
			if big == 0 {
				t.Errorf("no packet over 64 KiB on the packet path: BIG TCP did not take")
			}
		})
	}
}
