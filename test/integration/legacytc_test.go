package integration

import (
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
)

// TestRedirectLegacyTC: the packet path with the pod program attached the
// way kernels without tcx (before 6.6) get it, clsact + cls_bpf
// direct-action, forced here so that every kernel tests it. A verified
// stream each way of IPv4 and IPv6 goes pod to pod past the bridge; a load
// again (an upgrade) moves the filters to the new program; unload removes
// them; the veths are left without Patu's filter.
func TestRedirectLegacyTC(t *testing.T) {
	e := setup(t, "itt", 14, 2, packetPath, bpf.Options{LegacyTC: true})
	a, b := e.net.Pods[0], e.net.Pods[1]
	if got := e.dp.PodAttachMode(); got != "tc" {
		t.Fatalf("pods attach with %q, want tc", got)
	}
	requireFilters(t, e, true)
	stream := func(port uint16) {
		t.Helper()
		for fam, ip := range families(b) {
			e.serve(b, addr(ip, port), "sink")
			l0 := e.local()
			_, tx0, err := b.VethPackets()
			if err != nil {
				t.Fatal(err)
			}
			res, err := e.client(a, time.Minute, "--connect", addr(ip, port).String(), "--mode", "stream",
				"--bytes", "33554432", "--seed", "3")
			requireClean(t, res, err)
			_, tx1, err := b.VethPackets()
			if err != nil {
				t.Fatal(err)
			}
			l1 := e.local()
			// What the packet path handed the server's veth (a bulk
			// direction, local.h) is not the bridge's.
			pkts := tx1 - tx0 - (l1.BacklogPackets - l0.BacklogPackets)
			t.Logf("%s: %d bytes; packet path %d pkts %d bytes; packets into the server by the bridge %d",
				fam, res.Bytes, l1.RedirectPackets-l0.RedirectPackets, l1.RedirectBytes-l0.RedirectBytes, pkts)
			if l1.Admitted == l0.Admitted {
				t.Fatalf("%s: connection not admitted to the packet path", fam)
			}
			if got := l1.RedirectBytes - l0.RedirectBytes; got < uint64(res.Bytes) {
				t.Fatalf("%s: packet path carried %d bytes of a %d-byte stream", fam, got, res.Bytes)
			}
			// The bridge path takes thousands for 32 MiB; the packet
			// path leaves the handshake and the last ACKs to the bridge.
			if pkts > 50 {
				t.Fatalf("%s: %d packets into the server by the bridge on the packet path", fam, pkts)
			}
		}
	}
	stream(7101)

	// An upgrade: the filters now run the newly loaded program.
	before := filterProgs(t, e)
	dp, err := bpf.Load(bpf.Options{PinDir: e.dp.PinDir(), LegacyTC: true})
	if err != nil {
		t.Fatalf("load again: %v", err)
	}
	dp.Close()
	after := filterProgs(t, e)
	for ifindex, id := range after {
		if id == 0 || id == before[ifindex] {
			t.Fatalf("ifindex %d: filter still runs program %d after the upgrade", ifindex, id)
		}
	}
	stream(7102)

	// The streams have ended (FIN both ways): unload detaches at once.
	if _, err := bpf.Unload(e.dp.PinDir()); err != nil {
		t.Fatalf("unload: %v", err)
	}
	requireFilters(t, e, false)
}

// filterProgs returns, per pod's host veth, the program id of Patu's
// ingress filter (0: none).
func filterProgs(t *testing.T, e *env) map[int]int {
	t.Helper()
	out := map[int]int{}
	err := e.net.Node.Do(func() error {
		for _, p := range e.net.Pods {
			out[p.HostIfindex] = 0
			fs, err := netlink.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: p.HostIfindex}}, netlink.HANDLE_MIN_INGRESS)
			if err != nil {
				return err
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == "patu_from_pod" {
					out[p.HostIfindex] = bf.Id
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list tc filters: %v", err)
	}
	return out
}

func requireFilters(t *testing.T, e *env, want bool) {
	t.Helper()
	for ifindex, id := range filterProgs(t, e) {
		if (id != 0) != want {
			t.Fatalf("ifindex %d: Patu's cls_bpf filter present = %v, want %v", ifindex, id != 0, want)
		}
	}
	var attached bool
	err := e.net.Node.Do(func() error {
		attached = e.dp.PodAttached(uint32(e.net.Pods[0].HostIfindex))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if attached != want {
		t.Fatalf("PodAttached = %v, want %v", attached, want)
	}
}
