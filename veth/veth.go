// Package veth finds the two ends of a pod's veth pair: the interface
// inside the pod's network namespace and its peer on the node. The XDP
// fast path needs both (it redirects into the node end and addresses the
// pod end's MAC); the CNI plugin learns them from prevResult too, the
// watcher and the OCI hooks only from the kernel.
package veth

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/netns"
)

// Pair is a pod's interface and the node end of its veth.
type Pair struct {
	// PodName, PodIndex and PodMAC are the pod's interface, in its
	// namespace.
	PodName  string
	PodIndex int
	PodMAC   net.HardwareAddr
	// HostIndex and HostMAC are the peer, in the caller's namespace.
	HostIndex uint32
	HostMAC   net.HardwareAddr
}

// ErrNotVeth is returned when the pod's interface is not a veth (macvlan,
// ipvlan, a physical device moved into the namespace): there is no node
// end to redirect into.
var ErrNotVeth = errors.New("not a veth")

// Find returns the veth pair whose pod end, inside the namespace at
// nsPath, holds ip. The node end must be in the caller's namespace.
func Find(nsPath string, ip netip.Addr) (Pair, error) {
	var (
		p         Pair
		peerIndex int
	)
	err := netns.Do(nsPath, func() error {
		addrs, err := addrList()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); !ok || got.Unmap() != ip {
				continue
			}
			link, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return fmt.Errorf("link of %s: %w", ip, err)
			}
			at := link.Attrs()
			if link.Type() != "veth" {
				return fmt.Errorf("%s on %s (%s): %w", ip, at.Name, link.Type(), ErrNotVeth)
			}
			p.PodName, p.PodIndex, p.PodMAC, peerIndex = at.Name, at.Index, at.HardwareAddr, at.ParentIndex
			return nil
		}
		return fmt.Errorf("no interface holds %s", ip)
	})
	if err != nil {
		return Pair{}, fmt.Errorf("pod interface in %s: %w", nsPath, err)
	}
	host, err := HostPeer(nsPath, peerIndex, p.PodIndex)
	if err != nil {
		return Pair{}, fmt.Errorf("node end of the veth in %s: %w", nsPath, err)
	}
	p.HostIndex, p.HostMAC = uint32(host.Attrs().Index), host.Attrs().HardwareAddr
	return p, nil
}

func addrList() ([]netlink.Addr, error) {
	var (
		addrs []netlink.Addr
		err   error
	)
	// A dump: retried when the kernel says it changed meanwhile.
	for range 5 {
		addrs, err = netlink.AddrList(nil, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return addrs, err
}

// HostPeer returns the link at index in the caller's namespace if it is
// the veth peer of the link podIndex in the namespace at nsPath.
func HostPeer(nsPath string, index, podIndex int) (netlink.Link, error) {
	host, err := netlink.LinkByIndex(index)
	if err != nil {
		return nil, err
	}
	a := host.Attrs()
	if host.Type() != "veth" || a.ParentIndex != podIndex {
		return nil, fmt.Errorf("ifindex %d is %s %q with peer ifindex %d, not the peer of ifindex %d",
			index, host.Type(), a.Name, a.ParentIndex, podIndex)
	}
	// The same ifindex pair can exist between two other namespaces: the
	// peer's namespace id, as this namespace numbers it, must be the pod's.
	f, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer unix.Close(f)
	id, err := netlink.GetNetNsIdByFd(f)
	if err != nil {
		return nil, fmt.Errorf("netns id of %s: %w", nsPath, err)
	}
	if id != a.NetNsID {
		return nil, fmt.Errorf("%q has its peer in netns id %d, the pod is in netns id %d", a.Name, a.NetNsID, id)
	}
	return host, nil
}
