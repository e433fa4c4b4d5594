package netns

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// SetGSOMaxSize sets the largest GSO packet the stack builds for ifname
// inside the namespace at nsPath, IPv6 and IPv4 (BIG TCP), capped at what
// the device takes. It returns the size set. IPv4's own limit (Linux 6.3+)
// is set where the kernel has it.
func SetGSOMaxSize(nsPath, ifname string, size uint32) (uint32, error) {
	err := Do(nsPath, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		size, err = setGSOMaxSize(l, size)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("set GSO size of %s in %s: %w", ifname, nsPath, err)
	}
	return size, nil
}

// SetGSOMaxSizeIndex is SetGSOMaxSize for the device with index ifindex
// in the caller's namespace.
func SetGSOMaxSizeIndex(ifindex int, size uint32) (uint32, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err == nil {
		size, err = setGSOMaxSize(l, size)
	}
	if err != nil {
		return 0, fmt.Errorf("set GSO size of ifindex %d: %w", ifindex, err)
	}
	return size, nil
}

func setGSOMaxSize(l netlink.Link, size uint32) (uint32, error) {
	if max := l.Attrs().TSOMaxSize; max > 0 && size > max {
		size = max
	}
	if err := netlink.LinkSetGSOMaxSize(l, int(size)); err != nil {
		return 0, fmt.Errorf("gso_max_size %d: %w", size, err)
	}
	// Older kernels refuse the attribute: IPv6 alone gets the size.
	netlink.LinkSetGSOIPv4MaxSize(l, int(size))
	return size, nil
}
