package testnet

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/netns"
)

// The uplink (Config.Uplink) stands for the node's link to the world:
//
//	<prefix>-ext (cgroup <prefix>-ext)            node netns (forwarding on)
//	  eth0  Uplink4 .2, Uplink6 ::2  ══════════  <prefix>up  .1, ::1
//	  routes: Subnet4, Subnet6 via the node         <prefix>-br ── pods
//
// The client's eth0 has transmit checksum offload off, as a frame on a wire
// carries a full checksum: a veth would otherwise pass partial checksums
// that an XDP redirect on the node cannot complete.

func validateUplink(cfg Config) error {
	if !cfg.Uplink4.IsValid() || !cfg.Uplink4.Addr().Is4() || hostBits(cfg.Uplink4) < 2 {
		return fmt.Errorf("testnet %s: uplink IPv4 prefix %s cannot hold two addresses", cfg.Prefix, cfg.Uplink4)
	}
	if !cfg.Uplink6.IsValid() || !cfg.Uplink6.Addr().Is6() || cfg.Uplink6.Addr().Is4In6() || hostBits(cfg.Uplink6) < 2 {
		return fmt.Errorf("testnet %s: uplink IPv6 prefix %s cannot hold two addresses", cfg.Prefix, cfg.Uplink6)
	}
	if cfg.Uplink4.Overlaps(cfg.Subnet4) || cfg.Uplink6.Overlaps(cfg.Subnet6) {
		return fmt.Errorf("testnet %s: uplink prefixes %s, %s overlap the pods' subnets", cfg.Prefix, cfg.Uplink4, cfg.Uplink6)
	}
	return nil
}

func (n *Net) buildUplink() error {
	cfg := n.cfg
	n.NodeUplinkIP4 = cfg.Uplink4.Masked().Addr().Next()
	n.NodeUplinkIP6 = cfg.Uplink6.Masked().Addr().Next()
	n.ExtIP4, n.ExtIP6 = n.NodeUplinkIP4.Next(), n.NodeUplinkIP6.Next()
	n.Uplink = cfg.Prefix + "up"

	ext, err := n.newPod(cfg.Prefix+"-ext", cfg.Prefix+"-ext", n.ExtIP4, n.ExtIP6)
	if err != nil {
		return err
	}
	n.Ext = ext
	ext.HostVeth, ext.PodVeth = n.Uplink, "eth0"

	nsf, err := os.Open(ext.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ext.Name, err)
	}
	defer nsf.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.Uplink},
		PeerName:      ext.PodVeth,
		PeerNamespace: netlink.NsFd(nsf.Fd()),
	}
	if err := n.node.LinkAdd(veth); err != nil {
		return fmt.Errorf("create uplink veth %s: %w", n.Uplink, err)
	}
	up, err := n.node.LinkByName(n.Uplink)
	if err != nil {
		return fmt.Errorf("find uplink %s: %w", n.Uplink, err)
	}
	ext.HostIfindex = up.Attrs().Index
	ext.HostMAC = up.Attrs().HardwareAddr
	if err := addPrefixes(n.node, up, netip.PrefixFrom(n.NodeUplinkIP4, cfg.Uplink4.Bits()), netip.PrefixFrom(n.NodeUplinkIP6, cfg.Uplink6.Bits())); err != nil {
		return fmt.Errorf("uplink %s: %w", n.Uplink, err)
	}
	if err := n.node.LinkSetUp(up); err != nil {
		return fmt.Errorf("set uplink %s up: %w", n.Uplink, err)
	}
	// The node routes between the uplink and the bridge.
	if err := n.Node.Do(func() error {
		for _, k := range []string{"ipv4/ip_forward", "ipv6/conf/all/forwarding"} {
			if err := os.WriteFile("/proc/sys/net/"+k, []byte("1"), 0); err != nil {
				return fmt.Errorf("sysctl %s: %w", k, err)
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("forwarding in %s: %w", n.Node.Name, err)
	}

	if err := ext.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
		eth, err := h.LinkByName(ext.PodVeth)
		if err != nil {
			return fmt.Errorf("find %s: %w", ext.PodVeth, err)
		}
		ext.PodMAC = eth.Attrs().HardwareAddr
		if err := addPrefixes(h, eth, netip.PrefixFrom(n.ExtIP4, cfg.Uplink4.Bits()), netip.PrefixFrom(n.ExtIP6, cfg.Uplink6.Bits())); err != nil {
			return fmt.Errorf("%s: %w", ext.PodVeth, err)
		}
		if err := h.LinkSetUp(eth); err != nil {
			return fmt.Errorf("set %s up: %w", ext.PodVeth, err)
		}
		for _, r := range []struct {
			dst netip.Prefix
			gw  netip.Addr
		}{{cfg.Subnet4.Masked(), n.NodeUplinkIP4}, {cfg.Subnet6.Masked(), n.NodeUplinkIP6}} {
			route := &netlink.Route{
				LinkIndex: eth.Attrs().Index,
				Dst:       &net.IPNet{IP: r.dst.Addr().AsSlice(), Mask: net.CIDRMask(r.dst.Bits(), r.dst.Addr().BitLen())},
				Gw:        r.gw.AsSlice(),
			}
			if err := h.RouteAdd(route); err != nil {
				return fmt.Errorf("route %s via %s: %w", r.dst, r.gw, err)
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("set up %s: %w", ext.Name, err)
	}
	if err := netns.SetTxChecksum(ext.NetnsPath, ext.PodVeth, false); err != nil {
		return err
	}
	deadline := time.Now().Add(usableTimeout)
	if err := waitLink(n.Node, n.Uplink, deadline); err != nil {
		return err
	}
	return waitLink(ext, ext.PodVeth, deadline)
}

// addPrefixes gives link the addresses ps, IPv6 ones with DAD off.
func addPrefixes(h *netlink.Handle, link netlink.Link, ps ...netip.Prefix) error {
	for _, a := range ps {
		addr := &netlink.Addr{
			IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())},
		}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s: %w", a, err)
		}
	}
	return nil
}
