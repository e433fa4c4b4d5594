package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"
)

// XDPRoute tells the XDP program how to hand a frame to a pod.
type XDPRoute struct {
	// IP is the pod's address (IPv4 or IPv6).
	IP netip.Addr `json:"ip"`
	// HostIfindex is the pod's host-side veth in the node's namespace.
	HostIfindex uint32 `json:"host_ifindex"`
	// HostMAC is the source MAC of frames handed to the pod: its gateway
	// (the bridge, or the host-side veth on routed setups). With PodMAC,
	// what XDP writes into the frames it redirects; a route without them
	// serves the local path only.
	HostMAC net.HardwareAddr `json:"host_mac,omitempty"`
	// PodMAC is the MAC of the pod's eth0.
	PodMAC net.HardwareAddr `json:"pod_mac,omitempty"`
	// Excluded keeps traffic from the uplink to the pod on the normal path
	// (netfilter, conntrack).
	Excluded bool `json:"excluded,omitempty"`
	// NoLocal keeps the pod's connections with other pods of the node on
	// the normal path (opted out of Patu's redirects).
	NoLocal bool `json:"no_local,omitempty"`
}

// PutXDPRoute adds or replaces the route of a pod address. The pod-side
// veth must receive in NAPI mode (netns.EnableGRO) or redirected frames
// are dropped.
func (d *Datapath) PutXDPRoute(r XDPRoute) error {
	x, err := d.xdpMaps()
	if err != nil {
		return err
	}
	if !r.IP.IsValid() {
		return fmt.Errorf("put XDP route: invalid IP")
	}
	macs := len(r.HostMAC) == 6 && len(r.PodMAC) == 6
	if r.HostIfindex == 0 || (!macs && (len(r.HostMAC) != 0 || len(r.PodMAC) != 0)) {
		return fmt.Errorf("put XDP route %s: want a host ifindex and two 6-byte MACs or none, got %d, %q, %q", r.IP, r.HostIfindex, r.HostMAC, r.PodMAC)
	}
	var v xdpRoute
	v.Ifindex = r.HostIfindex
	if r.Excluded {
		v.Flags |= uint32(xdpRouteFlagsROUTE_EXCLUDED)
	}
	if r.NoLocal {
		v.Flags |= uint32(xdpRouteFlagsROUTE_NO_LOCAL)
	}
	if !macs {
		v.Flags |= uint32(xdpRouteFlagsROUTE_NO_MACS)
	}
	copy(v.PodMac[:], r.PodMAC)
	copy(v.HostMac[:], r.HostMAC)
	k := xdpRouteKey{Ip: addrWords(endpointKey(r.IP))}
	if err := x.routes.Put(&k, &v); err != nil {
		return fmt.Errorf("put XDP route %s: %w", r.IP, err)
	}
	if r.Excluded {
		// Its replies must take the normal path too.
		_, err := d.deleteFlows(func(fk xdpFlowKey, _ xdpFlow) bool { return fk.Src == k.Ip })
		return err
	}
	return nil
}

// DeleteXDPRoute removes the route of a pod address and the flows XDP
// recorded for it: its traffic, and replies, take the normal path again.
// A missing route is not an error.
func (d *Datapath) DeleteXDPRoute(ip netip.Addr) error {
	x, err := d.xdpMaps()
	if err != nil {
		return err
	}
	key := addrWords(endpointKey(ip))
	k := xdpRouteKey{Ip: key}
	if err := x.routes.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete XDP route %s: %w", ip, err)
	}
	_, err = d.deleteFlows(func(k xdpFlowKey, _ xdpFlow) bool { return k.Src == key })
	return err
}

// XDPRoutes lists the pod routes, by address.
func (d *Datapath) XDPRoutes() ([]XDPRoute, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return nil, err
	}
	var (
		k   xdpRouteKey
		v   xdpRoute
		out []XDPRoute
	)
	it := x.routes.Iterate()
	for it.Next(&k, &v) {
		r := XDPRoute{
			IP:          netip.AddrFrom16(wordsAddr(k.Ip)).Unmap(),
			HostIfindex: v.Ifindex,
			Excluded:    v.Flags&uint32(xdpRouteFlagsROUTE_EXCLUDED) != 0,
			NoLocal:     v.Flags&uint32(xdpRouteFlagsROUTE_NO_LOCAL) != 0,
		}
		if v.Flags&uint32(xdpRouteFlagsROUTE_NO_MACS) == 0 {
			r.HostMAC = append(net.HardwareAddr(nil), v.HostMac[:]...)
			r.PodMAC = append(net.HardwareAddr(nil), v.PodMac[:]...)
		}
		out = append(out, r)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list XDP routes: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out, nil
}

// ------------------------------------------------------------ hostPorts

// HostPort maps a port of the node to a pod's port, as the portmap
// plugin's DNAT does.
type HostPort struct {
	// HostIP is the node address the mapping listens on; the zero Addr
	// means any local address of the node (of PodIP's family).
	HostIP   netip.Addr `json:"host_ip,omitzero"`
	Proto    uint8      `json:"proto"` // 6 (TCP) or 17 (UDP)
	HostPort uint16     `json:"host_port"`
	PodIP    netip.Addr `json:"pod_ip"`
	PodPort  uint16     `json:"pod_port"`
}

const (
	protoTCP = 6
	protoUDP = 17
)

// anyKey is the "any local address" key of a family: ::ffff:0.0.0.0 for
// IPv4, :: for IPv6.
func anyKey(v4 bool) [4]uint32 {
	if v4 {
		return addrWords(netip.IPv4Unspecified().As16())
	}
	return [4]uint32{}
}

func hostPortKey(h HostPort, v4 bool) xdpHostportKey {
	k := xdpHostportKey{Port: htons(h.HostPort), Proto: h.Proto}
	if h.HostIP.IsValid() && !h.HostIP.IsUnspecified() {
		k.Ip = addrWords(endpointKey(h.HostIP))
	} else {
		k.Ip = anyKey(v4)
	}
	return k
}

// PutHostPort adds or replaces a hostPort mapping. The pod needs an XDP
// route (PutXDPRoute) for its traffic to take the XDP path.
func (d *Datapath) PutHostPort(h HostPort) error {
	x, err := d.xdpMaps()
	if err != nil {
		return err
	}
	if h.Proto != protoTCP && h.Proto != protoUDP {
		return fmt.Errorf("put hostPort %d: protocol %d: want 6 (TCP) or 17 (UDP)", h.HostPort, h.Proto)
	}
	if !h.PodIP.IsValid() || h.HostPort == 0 || h.PodPort == 0 {
		return fmt.Errorf("put hostPort %d/%d: want a pod IP and non-zero ports", h.HostPort, h.Proto)
	}
	v4 := h.PodIP.Unmap().Is4()
	if h.HostIP.IsValid() && !h.HostIP.IsUnspecified() && h.HostIP.Unmap().Is4() != v4 {
		return fmt.Errorf("put hostPort %s:%d: host and pod address %s are of different families", h.HostIP, h.HostPort, h.PodIP)
	}
	k := hostPortKey(h, v4)
	v := xdpHostport{PodIp: addrWords(endpointKey(h.PodIP)), PodPort: htons(h.PodPort)}
	if err := x.hostports.Put(&k, &v); err != nil {
		return fmt.Errorf("put hostPort %d/%d: %w", h.HostPort, h.Proto, err)
	}
	if err := d.syncHostPortWord(h.Proto, h.HostPort); err != nil {
		return err
	}
	// A changed target: flows to the old one must not be translated back.
	_, err = d.deleteFlows(func(fk xdpFlowKey, f xdpFlow) bool {
		return natFlowOf(fk, f, k) && (fk.Src != v.PodIp || fk.Sport != v.PodPort)
	})
	return err
}

// natFlowOf says whether a flow came in through hostPort key k.
func natFlowOf(fk xdpFlowKey, f xdpFlow, k xdpHostportKey) bool {
	if f.Flags&uint8(xdpFlowFlagsFLOW_NAT) == 0 || fk.Proto != k.Proto || f.OrigPort != k.Port {
		return false
	}
	if k.Ip == anyKey(true) {
		return netip.AddrFrom16(wordsAddr(f.OrigIp)).Is4In6()
	}
	if k.Ip == anyKey(false) {
		return !netip.AddrFrom16(wordsAddr(f.OrigIp)).Is4In6()
	}
	return f.OrigIp == k.Ip
}

// DeleteHostPort removes the mapping of h.HostIP, h.Proto and h.HostPort,
// and the flows that came in through it: their packets take the normal
// path again. With a zero HostIP it removes the "any address" mapping of
// PodIP's family, or of both families when PodIP is zero too. A missing
// mapping is not an error.
func (d *Datapath) DeleteHostPort(h HostPort) error {
	x, err := d.xdpMaps()
	if err != nil {
		return err
	}
	var keys []xdpHostportKey
	switch {
	case h.HostIP.IsValid() && !h.HostIP.IsUnspecified():
		keys = append(keys, hostPortKey(h, h.HostIP.Unmap().Is4()))
	case h.PodIP.IsValid():
		keys = append(keys, hostPortKey(h, h.PodIP.Unmap().Is4()))
	default:
		keys = append(keys, hostPortKey(h, true), hostPortKey(h, false))
	}
	for _, k := range keys {
		if err := x.hostports.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete hostPort %d/%d: %w", h.HostPort, h.Proto, err)
		}
	}
	hps, err := d.HostPorts()
	if err != nil {
		return err
	}
	still := false
	var exact []xdpHostportKey
	for _, o := range hps {
		if o.Proto == h.Proto && o.HostPort == h.HostPort {
			still = true
			exact = append(exact, hostPortKey(o, o.PodIP.Unmap().Is4()))
		}
	}
	if !still {
		if err := d.syncHostPortWord(h.Proto, h.HostPort); err != nil {
			return err
		}
	}
	_, err = d.deleteFlows(func(fk xdpFlowKey, f xdpFlow) bool {
		for _, k := range exact {
			if natFlowOf(fk, f, k) && k.Ip != anyKey(true) && k.Ip != anyKey(false) {
				return false // it came in through a mapping that stays
			}
		}
		for _, k := range keys {
			if natFlowOf(fk, f, k) {
				return true
			}
		}
		return false
	})
	return err
}

// HostPorts lists the hostPort mappings.
func (d *Datapath) HostPorts() ([]HostPort, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return nil, err
	}
	var (
		k   xdpHostportKey
		v   xdpHostport
		out []HostPort
	)
	it := x.hostports.Iterate()
	for it.Next(&k, &v) {
		h := HostPort{
			Proto:    k.Proto,
			HostPort: ntohs(k.Port),
			PodIP:    netip.AddrFrom16(wordsAddr(v.PodIp)).Unmap(),
			PodPort:  ntohs(v.PodPort),
		}
		if k.Ip != anyKey(true) && k.Ip != anyKey(false) {
			h.HostIP = netip.AddrFrom16(wordsAddr(k.Ip)).Unmap()
		}
		out = append(out, h)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list hostPorts: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].HostPort != out[j].HostPort {
			return out[i].HostPort < out[j].HostPort
		}
		if out[i].Proto != out[j].Proto {
			return out[i].Proto < out[j].Proto
		}
		return out[i].HostIP.Less(out[j].HostIP)
	})
	return out, nil
}

// ---------------------------------------------------------------- ports

// PortKey is a transport protocol (6 or 17) and port.
type PortKey struct {
	Proto uint8  `json:"proto"`
	Port  uint16 `json:"port"`
}

func portWord(kind xdpPortKind, proto uint8, port uint16) (uint32, uint64, error) {
	if proto != protoTCP && proto != protoUDP {
		return 0, 0, fmt.Errorf("port %d: protocol %d: want 6 (TCP) or 17 (UDP)", port, proto)
	}
	plane := uint32(kind) * 2
	if proto == protoUDP {
		plane++
	}
	return plane*1024 + uint32(port>>6), 1 << (port & 63), nil
}

// setPortBit sets or clears a port's bit. Read-modify-write: concurrent
// writers of the same 64-port word in different processes can lose an
// update, so it is only for the excluded ports, which an administrator
// sets; the hostPort bits are derived (syncHostPortWord).
func (d *Datapath) setPortBit(kind xdpPortKind, proto uint8, port uint16, on bool) error {
	idx, bit, err := portWord(kind, proto, port)
	if err != nil {
		return err
	}
	var w uint64
	if err := d.xdp.ports.Lookup(idx, &w); err != nil {
		return fmt.Errorf("read port set: %w", err)
	}
	if on {
		w |= bit
	} else {
		w &^= bit
	}
	if err := d.xdp.ports.Put(idx, w); err != nil {
		return fmt.Errorf("write port set: %w", err)
	}
	return nil
}

// syncHostPortWord rewrites the 64-port word of the hostPort bits that
// holds port from the hostPort map, which is the truth: CNI plugins of
// pods starting in parallel add and remove mappings concurrently. Every
// writer writes a word derived from the map and checks it again after the
// write; a writer whose word lacks another's mapping (derived before that
// one was added) finds the difference on its check and writes again, so
// the last word written covers every mapping in the map.
func (d *Datapath) syncHostPortWord(proto uint8, port uint16) error {
	idx, _, err := portWord(xdpPortKindPORTS_HOSTPORT, proto, port)
	if err != nil {
		return err
	}
	for range 8 {
		hps, err := d.HostPorts()
		if err != nil {
			return err
		}
		var want uint64
		for _, h := range hps {
			if i, bit, _ := portWord(xdpPortKindPORTS_HOSTPORT, h.Proto, h.HostPort); i == idx {
				want |= bit
			}
		}
		var have uint64
		if err := d.xdp.ports.Lookup(idx, &have); err != nil {
			return fmt.Errorf("read port set: %w", err)
		}
		if have == want {
			return nil
		}
		if err := d.xdp.ports.Put(idx, want); err != nil {
			return fmt.Errorf("write port set: %w", err)
		}
	}
	return fmt.Errorf("hostPort set of %d/%d: still changing after 8 writes", port, proto)
}

// ExcludePort keeps traffic to a destination port (as it arrives: the
// host port of a hostPort) off the XDP path. Flows already recorded keep
// their reply path until they are evicted.
func (d *Datapath) ExcludePort(proto uint8, port uint16) error {
	if _, err := d.xdpMaps(); err != nil {
		return err
	}
	if err := d.setPortBit(xdpPortKindPORTS_EXCLUDED, proto, port, true); err != nil {
		return fmt.Errorf("exclude port: %w", err)
	}
	return nil
}

// IncludePort undoes ExcludePort.
func (d *Datapath) IncludePort(proto uint8, port uint16) error {
	if _, err := d.xdpMaps(); err != nil {
		return err
	}
	if err := d.setPortBit(xdpPortKindPORTS_EXCLUDED, proto, port, false); err != nil {
		return fmt.Errorf("include port: %w", err)
	}
	return nil
}

// ExcludedPorts lists the excluded ports, TCP first, by port.
func (d *Datapath) ExcludedPorts() ([]PortKey, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return nil, err
	}
	var out []PortKey
	for _, proto := range []uint8{protoTCP, protoUDP} {
		base, _, _ := portWord(xdpPortKindPORTS_EXCLUDED, proto, 0)
		for i := uint32(0); i < 1024; i++ {
			var w uint64
			if err := x.ports.Lookup(base+i, &w); err != nil {
				return nil, fmt.Errorf("read port set: %w", err)
			}
			for b := 0; w != 0 && b < 64; b++ {
				if w&(1<<b) != 0 {
					out = append(out, PortKey{Proto: proto, Port: uint16(i*64) + uint16(b)})
				}
			}
		}
	}
	return out, nil
}

// ---------------------------------------------------------------- flows

// deleteFlows deletes the flows for which match is true and returns how
// many it deleted.
func (d *Datapath) deleteFlows(match func(xdpFlowKey, xdpFlow) bool) (int, error) {
	var (
		k    xdpFlowKey
		v    xdpFlow
		dead []xdpFlowKey
	)
	it := d.xdp.flows.Iterate()
	for it.Next(&k, &v) {
		if match(k, v) {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("list flows: %w", err)
	}
	n := 0
	for i := range dead {
		err := d.xdp.flows.Delete(&dead[i])
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete flow: %w", err)
		}
		n++
	}
	return n, nil
}

// FlowCount is the number of flows in the flow table (live or not yet
// evicted).
func (d *Datapath) FlowCount() (int, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return 0, err
	}
	return countKeys(x.flows)
}

// ------------------------------------------------------------- counters

// XDPCounters are the XDP path's counters, summed over CPUs.
type XDPCounters struct {
	// Pass counts frames the XDP program left to the kernel, by reason.
	Pass map[string]uint64 `json:"pass"`
	// RedirectPod and RedirectHostPort count frames redirected to a pod,
	// RedirectError redirects the helper refused.
	RedirectPod      uint64 `json:"redirect_pod"`
	RedirectHostPort uint64 `json:"redirect_hostport"`
	RedirectError    uint64 `json:"redirect_error"`
	// FlowInsert counts flows recorded (new, or changed), FlowInsertFail
	// failed inserts.
	FlowInsert     uint64 `json:"flow_insert"`
	FlowInsertFail uint64 `json:"flow_insert_fail"`
	// ReplyNAT counts replies translated back to the node's address and
	// host port; ReplyRedirect and ReplyRedirectNeigh replies sent
	// straight out of the uplink (the latter with the kernel resolving the
	// next hop); ReplyPass replies of known flows left to the normal path.
	ReplyNAT           uint64 `json:"reply_nat"`
	ReplyRedirect      uint64 `json:"reply_redirect"`
	ReplyRedirectNeigh uint64 `json:"reply_redirect_neigh"`
	ReplyPass          uint64 `json:"reply_pass"`
}

// passReasons names the pass counters, as users see them.
var passReasons = map[xdpXdpCounter]string{
	xdpXdpCounterXC_PASS_NOT_IP:        "not_ip",
	xdpXdpCounterXC_PASS_VLAN:          "vlan",
	xdpXdpCounterXC_PASS_L2MULTICAST:   "l2_multicast",
	xdpXdpCounterXC_PASS_SHORT:         "short",
	xdpXdpCounterXC_PASS_FRAGMENT:      "fragment",
	xdpXdpCounterXC_PASS_IP_OPTIONS:    "ip_options",
	xdpXdpCounterXC_PASS_IPV6EXT:       "ipv6_ext",
	xdpXdpCounterXC_PASS_ICMP:          "icmp",
	xdpXdpCounterXC_PASS_PROTO:         "proto",
	xdpXdpCounterXC_PASS_TTL:           "ttl",
	xdpXdpCounterXC_PASS_NO_MATCH:      "no_match",
	xdpXdpCounterXC_PASS_NOT_LOCAL:     "not_local",
	xdpXdpCounterXC_PASS_NO_ROUTE:      "no_route",
	xdpXdpCounterXC_PASS_EXCLUDED_PORT: "excluded_port",
	xdpXdpCounterXC_PASS_EXCLUDED_POD:  "excluded_pod",
	xdpXdpCounterXC_PASS_NOT_NEW:       "not_new",
}

// XDPCounters reads the XDP path's counters.
func (d *Datapath) XDPCounters() (XDPCounters, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return XDPCounters{}, err
	}
	raw := make([]uint64, xdpXdpCounterXC_MAX)
	var percpu []uint64
	for i := range raw {
		if err := x.counters.Lookup(uint32(i), &percpu); err != nil {
			return XDPCounters{}, fmt.Errorf("read XDP counter %d: %w", i, err)
		}
		for _, v := range percpu {
			raw[i] += v
		}
	}
	c := XDPCounters{
		Pass:               map[string]uint64{},
		RedirectPod:        raw[xdpXdpCounterXC_REDIRECT_POD],
		RedirectHostPort:   raw[xdpXdpCounterXC_REDIRECT_HOSTPORT],
		RedirectError:      raw[xdpXdpCounterXC_REDIRECT_ERROR],
		FlowInsert:         raw[xdpXdpCounterXC_FLOW_INSERT],
		FlowInsertFail:     raw[xdpXdpCounterXC_FLOW_INSERT_FAIL],
		ReplyNAT:           raw[xdpXdpCounterXC_REPLY_NAT],
		ReplyRedirect:      raw[xdpXdpCounterXC_REPLY_REDIRECT],
		ReplyRedirectNeigh: raw[xdpXdpCounterXC_REPLY_REDIRECT_NEIGH],
		ReplyPass:          raw[xdpXdpCounterXC_REPLY_PASS],
	}
	for i, name := range passReasons {
		c.Pass[name] = raw[i]
	}
	return c, nil
}
