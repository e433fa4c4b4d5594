package pods

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
)

// TestXDPLifecycle: the records the socket path keeps also drive the XDP
// path. Register puts a route per address; attaching an uplink readies
// the recorded pods (reply program on the host veth, GRO on the pod's
// interface) and Register readies later ones; Unregister and detaching
// the last uplink take it all away again.
func TestXDPLifecycle(t *testing.T) {
	testnet.Privileged(t)
	testnet.Sweep("pxd")
	n, err := testnet.New(testnet.Config{Prefix: "pxd", Pods: 2,
		Subnet4: netip.MustParsePrefix("10.205.8.0/24"), Subnet6: netip.MustParsePrefix("fd00:205:8::/64"),
		Uplink: true, Uplink4: netip.MustParsePrefix("10.205.9.0/24"), Uplink6: netip.MustParsePrefix("fd00:205:9::/64")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	dp := load(t)
	// Links, ifindexes and the FIB are the node namespace's.
	inNode := func(fn func() error) {
		t.Helper()
		if err := n.Node.Do(fn); err != nil {
			t.Fatal(err)
		}
	}
	record := func(i int, noXDP bool) bpf.Pod {
		p := n.Pods[i]
		return bpf.Pod{ID: "xdp-" + p.Name, Namespace: "ns", Name: p.Name, Netns: p.NetnsPath,
			IPs: []netip.Addr{p.IPv4, p.IPv6}, HostIfindex: uint32(p.HostIfindex), HostMAC: p.HostMAC, PodMAC: p.PodMAC,
			NoXDP: noXDP, Source: bpf.PodFromCNI, Created: time.Now()}
	}
	gro := func(i int) bool {
		t.Helper()
		on, err := netns.GROEnabled(n.Pods[i].NetnsPath, n.Pods[i].PodVeth)
		if err != nil {
			t.Fatal(err)
		}
		return on
	}

	// veth pairs start with GRO off; Patu turns it on for the XDP path
	// and back off when that path goes.
	if gro(0) || gro(1) {
		t.Fatal("GRO already on: the test cannot tell what Patu changed")
	}
	var p0 bpf.Pod
	inNode(func() (err error) { p0, err = Register(dp, record(0, false)); return err })
	routes, err := dp.XDPRoutes()
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 2 || routes[0].HostIfindex != p0.HostIfindex || routes[0].PodMAC.String() != p0.PodMAC.String() {
		t.Fatalf("routes %+v, want p0's two addresses into ifindex %d", routes, p0.HostIfindex)
	}
	// The pod program (local path, XDP replies) comes with the record.
	inNode(func() error {
		if !dp.PodAttached(p0.HostIfindex) {
			t.Error("no pod program on a registered pod's veth")
		}
		return nil
	})

	// The uplink comes: p0 is readied; p1, registered later, at once.
	inNode(func() error {
		if _, err := dp.AttachXDP(n.Uplink, ""); err != nil {
			return err
		}
		return SyncXDP(dp)
	})
	var p1 bpf.Pod
	inNode(func() (err error) { p1, err = Register(dp, record(1, false)); return err })
	inNode(func() error {
		for i, p := range []bpf.Pod{p0, p1} {
			if !dp.PodAttached(p.HostIfindex) {
				t.Errorf("pod %d: no pod program on its host veth", i)
			}
			if !gro(i) {
				t.Errorf("pod %d: GRO off on its interface", i)
			}
		}
		return nil
	})
	if err := SetHostPorts(dp, p1.ID, []HostPort{{Proto: 6, HostPort: 8080, ContainerPort: 80}}); err != nil {
		t.Fatal(err)
	}
	if hps, _ := dp.HostPorts(); len(hps) != 2 {
		t.Errorf("hostPorts %+v, want 8080 for each of p1's families", hps)
	}

	// p1 opts out of XDP: its routes say so and its GRO is off again; its
	// pod program stays, for the local path.
	inNode(func() (err error) { p1, err = Register(dp, record(1, true)); return err })
	if gro(1) {
		t.Error("opted-out pod keeps the GRO Patu turned on")
	}
	routes, _ = dp.XDPRoutes()
	for _, r := range routes {
		if slices.Contains(p1.IPs, r.IP) != r.Excluded {
			t.Errorf("route %+v: excluded should be %v", r, slices.Contains(p1.IPs, r.IP))
		}
	}
	inNode(func() error {
		if !dp.PodAttached(p1.HostIfindex) {
			t.Error("a pod opted out of XDP lost its pod program")
		}
		return nil
	})

	// p1 goes: its routes and hostPorts with it.
	inNode(func() error { _, err := Unregister(dp, p1.ID); return err })
	routes, _ = dp.XDPRoutes()
	hps, _ := dp.HostPorts()
	if len(routes) != 2 || len(hps) != 0 {
		t.Errorf("after p1's removal: routes %+v, hostPorts %+v", routes, hps)
	}

	// The last uplink goes: GRO goes back off; the pod program stays.
	inNode(func() error {
		if err := dp.DetachXDP(n.Uplink); err != nil {
			return err
		}
		return SyncXDP(dp)
	})
	inNode(func() error {
		if !dp.PodAttached(p0.HostIfindex) {
			t.Error("pod program gone with the last uplink")
		}
		return nil
	})
	if gro(0) {
		t.Error("GRO left on after the last uplink was detached")
	}
	if r, _ := dp.LookupPod(p0.ID); r.GROSet {
		t.Errorf("record still says Patu set GRO: %+v", r)
	}
	inNode(func() error { _, err := Unregister(dp, p0.ID); return err })
	if routes, _ := dp.XDPRoutes(); len(routes) != 0 {
		t.Errorf("routes left: %+v", routes)
	}
}
