package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The local packet path (local.h): TCP between two registered pods of the
// node keeps TCP end to end, its handshake takes the normal path, and the
// pod program on each pod's host-side veth then redirects both directions
// straight into the other pod. Its flows are in patu_local_flows, one
// entry per direction, until they close.

// LocalFlow is one direction of a connection on the local path.
type LocalFlow struct {
	Src netip.AddrPort `json:"src"`
	Dst netip.AddrPort `json:"dst"`
	// From is the host-side veth the direction's packets enter by, To the
	// peer pod's, into which they are redirected.
	From uint32 `json:"from_ifindex"`
	To   uint32 `json:"to_ifindex"`
	// Translated is the address this direction's packets get: the server
	// pod's for the client's direction of a Service connection (the
	// destination), the dialed one for the server's (the source).
	Translated netip.AddrPort `json:"translated,omitempty"`
	// Backlog is set once the direction carried a bulk packet: its packets
	// then go through the peer's host veth and the CPU's backlog rather
	// than straight into the pod (local.h says why).
	Backlog bool `json:"backlog,omitempty"`
	// Closing is set after RST or FIN both ways; the flow stays until
	// Expires (CLOCK_MONOTONIC).
	Closing bool          `json:"closing,omitempty"`
	Fin     bool          `json:"fin,omitempty"`
	Expires time.Duration `json:"expires_monotonic_ns,omitempty"`
}

func localFlowOf(k xdpLocalKey, v xdpLocalFlow) LocalFlow {
	var tr netip.AddrPort
	if v.Nat != 0 {
		tr = netip.AddrPortFrom(netip.AddrFrom16(wordsAddr(v.NatIp)).Unmap(), ntohs(v.NatPort))
	}
	return LocalFlow{
		Translated: tr,
		Src:        netip.AddrPortFrom(netip.AddrFrom16(wordsAddr(k.Src)).Unmap(), ntohs(k.Sport)),
		Dst:        netip.AddrPortFrom(netip.AddrFrom16(wordsAddr(k.Dst)).Unmap(), ntohs(k.Dport)),
		From:       v.From,
		To:         v.To,
		Backlog:    v.Via == uint8(xdpLocalViaLOCAL_VIA_BACKLOG),
		Closing:    v.State == uint8(xdpLocalStateLOCAL_CLOSING),
		Fin:        v.Fin != 0,
		Expires:    time.Duration(v.Expires),
	}
}

// LocalFlows lists the directions on the local path, sorted.
func (d *Datapath) LocalFlows() ([]LocalFlow, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return nil, err
	}
	var (
		k   xdpLocalKey
		v   xdpLocalFlow
		out []LocalFlow
	)
	it := x.localFlows.Iterate()
	for it.Next(&k, &v) {
		out = append(out, localFlowOf(k, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list local flows: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Src != out[j].Src {
			return out[i].Src.Compare(out[j].Src) < 0
		}
		return out[i].Dst.Compare(out[j].Dst) < 0
	})
	return out, nil
}

// DeleteLocalFlows removes the local path's flows from or to any of ips:
// for a pod that is gone. It returns how many directions it removed.
func (d *Datapath) DeleteLocalFlows(ips []netip.Addr) (int, error) {
	if len(ips) == 0 {
		return 0, nil
	}
	keys := make([][4]uint32, len(ips))
	for i, ip := range ips {
		keys[i] = addrWords(endpointKey(ip))
	}
	return d.deleteLocalFlows(func(k xdpLocalKey, _ xdpLocalFlow) bool {
		return slices.Contains(keys, k.Src) || slices.Contains(keys, k.Dst)
	})
}

// SweepLocalFlows removes closed flows whose grace is over, which the
// program removes itself only when one of their packets comes by. It
// returns how many directions it removed.
func (d *Datapath) SweepLocalFlows() (int, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read the monotonic clock: %w", err)
	}
	now := uint64(ts.Nano())
	return d.deleteLocalFlows(func(_ xdpLocalKey, v xdpLocalFlow) bool {
		return v.State == uint8(xdpLocalStateLOCAL_CLOSING) && now > v.Expires
	})
}

func (d *Datapath) deleteLocalFlows(match func(xdpLocalKey, xdpLocalFlow) bool) (int, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return 0, err
	}
	var (
		k    xdpLocalKey
		v    xdpLocalFlow
		dead []xdpLocalKey
	)
	it := x.localFlows.Iterate()
	for it.Next(&k, &v) {
		if match(k, v) {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("list local flows: %w", err)
	}
	n := 0
	for i := range dead {
		err := x.localFlows.Delete(&dead[i])
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete local flow: %w", err)
		}
		n++
	}
	return n, nil
}

// LocalCounters are the local path's counters, summed over CPUs.
type LocalCounters struct {
	// SYNs counts client SYNs between two registered pods, Admitted the
	// connections that then took the local path, AdmitFull those that
	// could not (flow table full), OptedOut handshakes with an opted-out
	// pod.
	SYNs      uint64 `json:"syns"`
	Admitted  uint64 `json:"admitted"`
	AdmitFull uint64 `json:"admit_full"`
	OptedOut  uint64 `json:"opted_out"`
	// RedirectPackets and RedirectBytes are what went straight into the
	// peer pods (bytes as seen on the veth, headers included).
	RedirectPackets uint64 `json:"redirect_packets"`
	RedirectBytes   uint64 `json:"redirect_bytes"`
	// RedirectBig counts packets over 64 KiB among them: BIG TCP at work.
	RedirectBig uint64 `json:"redirect_big"`
	// BacklogPackets and BacklogBytes are the part of them that bulk
	// directions handed to the peer's host veth (local.h says why): the
	// host veth's own counters include them.
	BacklogPackets uint64 `json:"backlog_packets"`
	BacklogBytes   uint64 `json:"backlog_bytes"`
	// ClosedFIN and ClosedRST count connections that ended; Expired the
	// closed directions the program removed after their grace.
	ClosedFIN uint64 `json:"closed_fin"`
	ClosedRST uint64 `json:"closed_rst"`
	Expired   uint64 `json:"expired"`
	// WrongVeth counts packets of a flow that entered by another veth
	// than its pod's: left to the normal path.
	WrongVeth uint64 `json:"wrong_veth"`
	// AdmittedNAT counts connections admitted through a destination
	// translation (a Service, a NodePort, a hostPort): the client dialed
	// another address than the server's. NotMatched counts SYN-ACKs from a
	// pod to a client that is no pod of this node as the server sees it
	// (another node, the node, or a pod the node masqueraded: hairpin,
	// most NodePorts). NATFailed counts translated packets the program
	// could not rewrite (dropped; TCP sends them again).
	AdmittedNAT uint64 `json:"admitted_nat"`
	NotMatched  uint64 `json:"not_matched"`
	NATFailed   uint64 `json:"nat_failed"`
	// Conntrack upkeep: entries kept alive, ended at close, and lookups
	// that found no entry.
	ConntrackRefresh uint64 `json:"conntrack_refresh"`
	ConntrackClose   uint64 `json:"conntrack_close"`
	ConntrackMissing uint64 `json:"conntrack_missing"`
}

// LocalCounters reads the local path's counters.
func (d *Datapath) LocalCounters() (LocalCounters, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return LocalCounters{}, err
	}
	raw := make([]uint64, xdpLocalCounterLC_MAX)
	var percpu []uint64
	for i := range raw {
		if err := x.localCounters.Lookup(uint32(i), &percpu); err != nil {
			return LocalCounters{}, fmt.Errorf("read local counter %d: %w", i, err)
		}
		for _, v := range percpu {
			raw[i] += v
		}
	}
	return LocalCounters{
		SYNs:             raw[xdpLocalCounterLC_SYN],
		Admitted:         raw[xdpLocalCounterLC_ADMIT],
		AdmitFull:        raw[xdpLocalCounterLC_ADMIT_FULL],
		OptedOut:         raw[xdpLocalCounterLC_SKIP_OPT_OUT],
		RedirectPackets:  raw[xdpLocalCounterLC_REDIRECT_PKTS],
		RedirectBytes:    raw[xdpLocalCounterLC_REDIRECT_BYTES],
		RedirectBig:      raw[xdpLocalCounterLC_REDIRECT_BIG],
		BacklogPackets:   raw[xdpLocalCounterLC_BACKLOG_PKTS],
		BacklogBytes:     raw[xdpLocalCounterLC_BACKLOG_BYTES],
		ClosedFIN:        raw[xdpLocalCounterLC_CLOSE_FIN],
		ClosedRST:        raw[xdpLocalCounterLC_CLOSE_RST],
		Expired:          raw[xdpLocalCounterLC_EXPIRED],
		WrongVeth:        raw[xdpLocalCounterLC_WRONG_VETH],
		AdmittedNAT:      raw[xdpLocalCounterLC_ADMIT_NAT],
		NotMatched:       raw[xdpLocalCounterLC_SKIP_SNAT],
		NATFailed:        raw[xdpLocalCounterLC_SKIP_NAT_FAIL],
		ConntrackRefresh: raw[xdpLocalCounterLC_CT_REFRESH],
		ConntrackClose:   raw[xdpLocalCounterLC_CT_CLOSE],
		ConntrackMissing: raw[xdpLocalCounterLC_CT_MISSING],
	}, nil
}

// drainLocalPrefix names the draining directory of an unloaded local path:
// draining/local-<flow map id>/ holds its flow map and its pod links.
const drainLocalPrefix = "local-"

// drainLocal is Unload's part for the local packet path. Connections on it
// bypass netfilter: a packet of theirs sent through it now would be out of
// conntrack's window, INVALID, and dropped where kube-proxy drops those.
// So while any is open, the pod programs stay attached and their flows
// keep their path; the routes are emptied, so that no new connection is
// admitted. A later Load or Unload removes them once the flows are gone.
func drainLocal(pinDir string, res *UnloadResult) error {
	flows, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "patu_local_flows"), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open local flows: %w", err)
	}
	defer flows.Close()
	d := &Datapath{pinDir: pinDir}
	live, err := liveLocalFlows(flows, linkedVeths(d.podLinkPins()))
	if err != nil || live == 0 {
		return err
	}
	// No new admissions, and no XDP flow's replies sent out of an uplink
	// that no longer has the XDP program.
	for _, name := range []string{"patu_xdp_routes", "patu_xdp_flows"} {
		if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil); err == nil {
			clearMap(m)
			m.Close()
		}
	}
	info, err := flows.Info()
	if err != nil {
		return fmt.Errorf("local flows map info: %w", err)
	}
	id, _ := info.ID()
	keep := filepath.Join(pinDir, dirDraining, fmt.Sprintf("%s%d", drainLocalPrefix, id))
	if err := os.MkdirAll(filepath.Join(keep, dirPodLinks), 0o700); err != nil {
		return fmt.Errorf("keep local flows: %w", err)
	}
	if err := flows.Pin(filepath.Join(keep, "patu_local_flows")); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("keep local flows: %w", err)
	}
	for _, pin := range d.podLinkPins() {
		if err := os.Rename(pin, filepath.Join(keep, dirPodLinks, filepath.Base(pin))); err != nil {
			return fmt.Errorf("keep pod link %s: %w", filepath.Base(pin), err)
		}
	}
	res.LiveFlows, res.KeptFlows = live, keep
	return nil
}

// sweepDrainingLocal removes a drained local path once none of its flows
// is open on a veth that still exists (a flow of a deleted pod has nowhere
// to go), and reports whether it is still live.
func sweepDrainingLocal(dir string) (bool, error) {
	entries, _ := os.ReadDir(filepath.Join(dir, dirPodLinks))
	var pins []string
	for _, e := range entries {
		pins = append(pins, filepath.Join(dir, dirPodLinks, e.Name()))
	}
	veths := linkedVeths(pins)
	flows, err := ebpf.LoadPinnedMap(filepath.Join(dir, "patu_local_flows"), nil)
	live := 0
	if err == nil {
		live, err = liveLocalFlows(flows, veths)
		flows.Close()
		if err != nil {
			return true, err
		}
	}
	if live > 0 {
		return true, nil
	}
	detachPins(pins)
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("remove drained local path %s: %w", dir, err)
	}
	return false, nil
}

// linkedVeths returns the veths the pod links at pins are attached to:
// a link whose veth was deleted (its pod went) is not.
func linkedVeths(pins []string) map[uint32]bool {
	veths := map[uint32]bool{}
	for _, pin := range pins {
		if _, _, legacy := parseTCPin(pin); legacy {
			if ifindex, ok := tcVeth(pin); ok {
				veths[ifindex] = true
			}
			continue
		}
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if info, err := l.Info(); err == nil && info.TCX() != nil && info.TCX().Ifindex != 0 {
				veths[info.TCX().Ifindex] = true
			}
			l.Close()
		}
	}
	return veths
}

// liveLocalFlows counts the directions in flows that are open, entering by
// one of veths. Closed ones in their grace do not
// hold a drained path: what is left of them is a retransmission at most.
func liveLocalFlows(flows *ebpf.Map, veths map[uint32]bool) (int, error) {
	var (
		k    xdpLocalKey
		v    xdpLocalFlow
		live int
	)
	it := flows.Iterate()
	for it.Next(&k, &v) {
		if v.State == uint8(xdpLocalStateLOCAL_OPEN) && veths[v.From] {
			live++
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("list local flows: %w", err)
	}
	return live, nil
}

// clearMap deletes every key of a hash map it can.
func clearMap(m *ebpf.Map) {
	var keys [][]byte
	var key []byte
	for {
		var next []byte
		var err error
		if key == nil {
			next, err = m.NextKeyBytes(nil) // a typed nil slice would be taken for a key
		} else {
			next, err = m.NextKeyBytes(key)
		}
		if err != nil || next == nil {
			break
		}
		keys = append(keys, next)
		key = next
	}
	for _, k := range keys {
		m.Delete(k)
	}
}

// CarriedBytes is what Patu's fast paths carried so far: bytes redirected
// socket to socket plus bytes (with their headers) the local packet path
// sent straight into pods. Tests and the demo read it before and after a
// transfer to see that it took a fast path, whichever.
func (d *Datapath) CarriedBytes() (uint64, error) {
	c, err := d.Counters()
	if err != nil {
		return 0, err
	}
	l, err := d.LocalCounters()
	if err != nil {
		return 0, err
	}
	return c.RedirectBytes + l.RedirectBytes, nil
}

// BigTCP returns the GSO size registration sets on pods' interfaces, 0 for
// none (patu load --big-tcp).
func (d *Datapath) BigTCP() (uint32, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return 0, err
	}
	var v xdpSettings
	if err := x.settings.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("read settings: %w", err)
	}
	return v.BigTcp, nil
}
