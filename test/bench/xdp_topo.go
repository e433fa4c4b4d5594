package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
)

// The xdp section's names and addresses: nothing else uses them, so it can
// run next to the other sections and the test suites.
const (
	xdpPrefix = "xb1"
	xdpPinDir = "/sys/fs/bpf/patu-bench-xdp"
	// Container ports of the pod's servers, and the hostPorts mapped to them.
	xdpPortRR, xdpPortTCP, xdpPortUDP = 7001, 7002, 7003
	xdpHostPortOffset                 = 10000
)

var (
	xdpUplink4 = netip.MustParsePrefix("10.231.0.0/24")
	xdpUplink6 = netip.MustParsePrefix("fd00:231::/64")
	xdpPods4   = netip.MustParsePrefix("10.231.1.0/24")
	xdpPods6   = netip.MustParsePrefix("fd00:231:1::/64")
)

// xdpTopo is the section's topology:
//
//	ext netns (client)            node netns                        pod netns
//	eth0 10.231.0.2 ══ uplink 10.231.0.1   bridge 10.231.1.1 ══ veth ══ eth0 10.231.1.2
//
// The node has the normal path of a real node (nodepath) between its uplink
// and the bridge.
type xdpTopo struct {
	net        *testnet.Net
	node, pod  *testnet.Pod
	ext        *testnet.Pod
	uplink     string // the node's uplink interface
	nodeIP4    netip.Addr
	nodeIP6    netip.Addr
	extIP4     netip.Addr
	extIP6     netip.Addr
	podMAC     net.HardwareAddr
	hostMAC    net.HardwareAddr
	nodeUndo   func() error
	nodeConfig nodepath.Config
}

// buildXDPTopo builds the topology: testnet's node, one pod and the
// uplink to the ext client, then the normal path of a real node.
func buildXDPTopo(services int) (*xdpTopo, error) {
	if err := testnet.Sweep(xdpPrefix); err != nil {
		return nil, fmt.Errorf("sweep stale topology %q: %w", xdpPrefix, err)
	}
	nt, err := testnet.New(testnet.Config{Prefix: xdpPrefix, Subnet4: xdpPods4, Subnet6: xdpPods6, Pods: 1,
		Uplink: true, Uplink4: xdpUplink4, Uplink6: xdpUplink6})
	if err != nil {
		return nil, fmt.Errorf("build topology: %w", err)
	}
	t := &xdpTopo{net: nt, node: nt.Node, pod: nt.Pods[0], ext: nt.Ext, uplink: nt.Uplink,
		nodeIP4: nt.NodeUplinkIP4, nodeIP6: nt.NodeUplinkIP6, extIP4: nt.ExtIP4, extIP6: nt.ExtIP6,
		podMAC: nt.Pods[0].PodMAC, hostMAC: nt.Pods[0].HostMAC}
	// The node's uplink gets GRO, as a NIC's driver has it, on every path
	// alike; so does the pod's eth0, which a DEVMAP redirect into its peer
	// needs (testnet already turned TX checksum offload off on the ext
	// side, as a wire has it).
	if err := netns.EnableGRO(t.node.NetnsPath, t.uplink); err != nil {
		nt.Close()
		return nil, err
	}
	if err := netns.EnableGRO(t.pod.NetnsPath, t.pod.PodVeth); err != nil {
		nt.Close()
		return nil, err
	}
	t.nodeConfig = nodepath.Config{
		Bridge:       nt.Bridge,
		PodSubnet4:   xdpPods4,
		PodSubnet6:   xdpPods6,
		ClusterCIDR4: netip.MustParsePrefix("10.231.0.0/17"),
		ClusterCIDR6: netip.MustParsePrefix("fd00:231::/48"),
		ServiceCIDR4: netip.MustParsePrefix("10.231.128.0/20"),
		ServiceCIDR6: netip.MustParsePrefix("fd00:231:43::/112"),
		RemotePods4:  netip.MustParsePrefix("10.231.64.0/18"),
		RemotePods6:  netip.MustParsePrefix("fd00:231:42::/64"),
		Services:     services,
		Pods:         []nodepath.Pod{{ID: "xb1-pod0", IPs: []netip.Addr{t.pod.IPv4, t.pod.IPv6}}},
	}
	for _, ip := range []netip.Addr{t.pod.IPv4, t.pod.IPv6} {
		for _, p := range []struct {
			proto string
			port  uint16
		}{{"tcp", xdpPortRR}, {"tcp", xdpPortTCP}, {"udp", xdpPortUDP}} {
			t.nodeConfig.HostPorts = append(t.nodeConfig.HostPorts, nodepath.HostPort{
				ContainerID: "xb1-pod0", Proto: p.proto, HostPort: p.port + xdpHostPortOffset, PodIP: ip, PodPort: p.port,
			})
		}
	}
	if t.nodeUndo, err = nodepath.Apply(t.node.NetnsPath, t.nodeConfig); err != nil {
		nt.Close()
		return nil, fmt.Errorf("node path: %w", err)
	}
	return t, nil
}

// close undoes the node path and removes the topology.
func (t *xdpTopo) close() error {
	var errs []error
	if t.nodeUndo != nil {
		if err := t.nodeUndo(); err != nil {
			errs = append(errs, fmt.Errorf("undo node path: %w", err))
		}
		t.nodeUndo = nil
	}
	if t.net != nil {
		if err := t.net.Close(); err != nil {
			errs = append(errs, fmt.Errorf("remove topology: %w", err))
		}
		t.net = nil
	}
	return errors.Join(errs...)
}
