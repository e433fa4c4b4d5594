package cniplugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/netns"
	"github.com/patu-dev/patu/veth"
)

// links is what the plugin learns about the pod's interface and the host
// side of its veth. Zero values are unknown.
type links struct {
	podIndex  int
	podMAC    net.HardwareAddr
	hostIndex uint32
	hostMAC   net.HardwareAddr
	// addrs are the global addresses on the pod's interface, read only
	// when asked for (prevResult named none).
	addrs []netip.Addr
	// problems are the lookups that failed; a fallback may have covered
	// them, and the caller logs them either way.
	problems []error
}

// lookupLinks finds the pod's interface ifName inside the namespace at
// nsPath and the host end of its veth in the plugin's own namespace.
//
// The host end is found from the kernel first: the pod end's IFLA_LINK is
// the peer's ifindex, which is checked to be a veth whose own peer is the
// pod end in that very namespace (ifindexes repeat across namespaces).
// Only when that fails are prevResult's host-side interfaces tried by
// name; a result may carry several (bridge lists the bridge first).
func lookupLinks(nsPath, ifName string, res *current.Result, wantAddrs bool) links {
	var l links
	peerIndex := 0
	err := netns.Do(nsPath, func() error {
		pod, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find %s: %w", ifName, err)
		}
		a := pod.Attrs()
		l.podIndex = a.Index
		if len(a.HardwareAddr) == 6 {
			l.podMAC = a.HardwareAddr
		}
		if pod.Type() == "veth" {
			peerIndex = a.ParentIndex
		}
		if wantAddrs {
			l.addrs, err = globalAddrs(pod)
			if err != nil {
				return fmt.Errorf("addresses of %s: %w", ifName, err)
			}
		}
		return nil
	})
	if err != nil {
		l.problems = append(l.problems, fmt.Errorf("pod interface in %s: %w", nsPath, err))
	}
	if l.podMAC == nil {
		if i := podInterface(res, ifName); i >= 0 {
			l.podMAC = parseMAC(res.Interfaces[i].Mac)
		}
	}

	if peerIndex > 0 {
		host, err := veth.HostPeer(nsPath, peerIndex, l.podIndex)
		if err == nil {
			l.hostIndex, l.hostMAC = uint32(host.Attrs().Index), host.Attrs().HardwareAddr
			return l
		}
		l.problems = append(l.problems, fmt.Errorf("host veth by peer ifindex %d: %w", peerIndex, err))
	} else if err == nil {
		l.problems = append(l.problems, fmt.Errorf("%s in %s is not a veth: no peer ifindex", ifName, nsPath))
	}

	host, err := hostFromResult(res, l.podIndex)
	if err != nil {
		l.problems = append(l.problems, fmt.Errorf("host veth from prevResult: %w", err))
		return l
	}
	l.hostIndex, l.hostMAC = uint32(host.Attrs().Index), host.Attrs().HardwareAddr
	return l
}

// hostFromResult picks the host end of the pod's veth among prevResult's
// host-side interfaces: a veth whose peer is podIndex, or, when the pod's
// interface could not be read, the only veth among them.
func hostFromResult(res *current.Result, podIndex int) (netlink.Link, error) {
	var (
		found []netlink.Link
		errs  []error
	)
	for _, iface := range hostInterfaces(res) {
		link, err := netlink.LinkByName(iface.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("find %s: %w", iface.Name, err))
			continue
		}
		if link.Type() != "veth" {
			continue
		}
		if podIndex > 0 && link.Attrs().ParentIndex != podIndex {
			continue
		}
		found = append(found, link)
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) > 1:
		return nil, fmt.Errorf("%d host-side veths, cannot tell which is the pod's", len(found))
	}
	errs = append(errs, errors.New("no host-side veth among its interfaces"))
	return nil, errors.Join(errs...)
}

// globalAddrs lists the global unicast addresses of link.
func globalAddrs(link netlink.Link) ([]netip.Addr, error) {
	var (
		addrs []netlink.Addr
		err   error
	)
	// A dump: retried when the kernel says it changed meanwhile.
	for range 5 {
		addrs, err = netlink.AddrList(link, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && ip.Unmap().IsGlobalUnicast() && a.Scope == unix.RT_SCOPE_UNIVERSE {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
