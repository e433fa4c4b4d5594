package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The packet programs (xdp.c). The XDP fast path for traffic entering the
// node: an XDP program on the uplinks redirects frames for registered pod
// addresses and hostPorts straight into the pods' host-side veths. And the
// program on each pod's host-side veth (tcx ingress, what the pod sends):
// the local packet path between pods of the node (local.h), then the
// replies of flows XDP delivered, sent back out. Their pins sit in the
// same directory as the socket path's.
const (
	pinXDPProgUplink = "patu_xdp_prog_uplink"
	pinProgFromPod   = "patu_prog_from_pod"
	// pinXDPLinkPrefix + ifindex: the XDP link of an uplink.
	pinXDPLinkPrefix = "patu_xdp_link_"
	// dirPodLinks/<ifindex>: the tcx link on a pod's host-side veth.
	dirPodLinks = "patu_pod_links"
)

// xdpState holds the handles on the packet programs' pinned maps.
type xdpState struct {
	routes, hostports, flows, ports, uplinks, counters *ebpf.Map
	localFlows, localPending, localCounters            *ebpf.Map
	settings                                           *ebpf.Map
}

func (x *xdpState) all() []**ebpf.Map {
	return []**ebpf.Map{&x.routes, &x.hostports, &x.flows, &x.ports, &x.uplinks, &x.counters,
		&x.localFlows, &x.localPending, &x.localCounters, &x.settings}
}

func (x *xdpState) close() {
	if x == nil {
		return
	}
	for _, m := range x.all() {
		if *m != nil {
			(*m).Close()
		}
	}
}

// errXDPNotLoaded says the pins predate the XDP path.
var errXDPNotLoaded = fmt.Errorf("%w: the XDP maps are missing (run: patu load)", ErrNotLoaded)

func (d *Datapath) xdpMaps() (*xdpState, error) {
	if d.xdp == nil {
		return nil, errXDPNotLoaded
	}
	return d.xdp, nil
}

// loadXDP loads the packet programs, creating or reusing their pinned
// maps, pins the programs (AttachXDP and AttachPod of any later process
// use them) and moves every live XDP and tcx link to them.
func (d *Datapath) loadXDP(opts Options) error {
	spec, err := loadXdp()
	if err != nil {
		return fmt.Errorf("read embedded XDP programs: %w", err)
	}
	for name, v := range map[string]any{
		"ct_established_ms": opts.ConntrackEstablished,
		"ct_refresh_ns":     uint64(opts.ConntrackRefresh.Nanoseconds()),
		"close_grace_ns":    uint64(opts.CloseGrace.Nanoseconds()),
		"ct_kfuncs":         boolByte(d.features.On(FeatureConntrackKfuncs)),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	if !d.features.On(FeatureTCX) {
		// Kernels before tcx know no BPF_TCX_INGRESS; cls_bpf takes
		// the program without an expected attach type.
		spec.Programs["patu_from_pod"].AttachType = ebpf.AttachNone
	}
	var objs xdpObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.pinDir}})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("load XDP programs: pinned maps in %s are from an incompatible version (run: patu unload): %w", d.pinDir, err)
		}
		return fmt.Errorf("load XDP programs: %w", err)
	}
	defer objs.xdpPrograms.Close()
	d.xdp = &xdpState{
		routes:    objs.PatuXdpRoutes,
		hostports: objs.PatuXdpHostports,
		flows:     objs.PatuXdpFlows,
		ports:     objs.PatuXdpPorts,
		uplinks:   objs.PatuXdpUplinks,
		counters:  objs.PatuXdpCounters,

		localFlows:    objs.PatuLocalFlows,
		localPending:  objs.PatuLocalPending,
		localCounters: objs.PatuLocalCounters,
		settings:      objs.PatuSettings,
	}
	if opts.BigTCP >= 0 {
		if err := d.xdp.settings.Put(uint32(0), xdpSettings{BigTcp: uint32(opts.BigTCP)}); err != nil {
			return fmt.Errorf("store settings: %w", err)
		}
	}
	if err := replacePin(objs.PatuXdpUplink, filepath.Join(d.pinDir, pinXDPProgUplink)); err != nil {
		return err
	}
	if err := replacePin(objs.PatuFromPod, filepath.Join(d.pinDir, pinProgFromPod)); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(d.pinDir, dirPodLinks), 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	// Pods attached from now on, by this process or any other, use the
	// mode the marker says; those attached before keep theirs.
	if d.features.On(FeatureTCX) {
		os.Remove(filepath.Join(d.pinDir, pinTCLegacy))
	} else if err := pinCopy(objs.PatuFromPod, filepath.Join(d.pinDir, pinTCLegacy)); err != nil {
		return err
	}
	// An upgrade replaces the programs under live links, atomically.
	for _, pin := range d.xdpLinkPins() {
		if err := updateLink(pin, objs.PatuXdpUplink); err != nil {
			return err
		}
	}
	for _, pin := range d.podLinkPins() {
		update := updateLink
		if _, _, legacy := parseTCPin(pin); legacy {
			update = updateTCPin
		}
		if err := update(pin, objs.PatuFromPod); err != nil {
			return err
		}
	}
	return nil
}

// updateLink moves the pinned link at pin to prog. A link whose device
// vanished is unpinned, which releases it.
func updateLink(pin string, prog *ebpf.Program) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open link %s: %w", pin, err)
	}
	defer l.Close()
	if err := l.Update(prog); err != nil {
		if defunct(l) {
			os.Remove(pin)
			return nil
		}
		return fmt.Errorf("update link %s: %w", pin, err)
	}
	return nil
}

// defunct says whether a link's device is gone (the kernel detached it).
func defunct(l link.Link) bool {
	info, err := l.Info()
	if err != nil {
		return true
	}
	if x := info.XDP(); x != nil {
		return x.Ifindex == 0
	}
	if t := info.TCX(); t != nil {
		return t.Ifindex == 0
	}
	return false
}

// openXDP opens the XDP path's pinned maps. Pins made by a build without
// the XDP path have none: the Datapath then serves the socket path only,
// and the XDP methods say to run patu load.
func (d *Datapath) openXDP() error {
	x := &xdpState{}
	for name, m := range map[string]**ebpf.Map{
		"patu_xdp_routes":     &x.routes,
		"patu_xdp_hostports":  &x.hostports,
		"patu_xdp_flows":      &x.flows,
		"patu_xdp_ports":      &x.ports,
		"patu_xdp_uplinks":    &x.uplinks,
		"patu_xdp_counters":   &x.counters,
		"patu_local_flows":    &x.localFlows,
		"patu_local_pending":  &x.localPending,
		"patu_local_counters": &x.localCounters,
		"patu_settings":       &x.settings,
	} {
		pm, err := ebpf.LoadPinnedMap(filepath.Join(d.pinDir, name), nil)
		if errors.Is(err, fs.ErrNotExist) {
			x.close()
			return nil
		}
		if err != nil {
			x.close()
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*m = pm
	}
	d.xdp = x
	return nil
}

// detachUplinks detaches every XDP link pinned under pinDir, so that
// Unload stops the XDP path even where a process still holds a link.
func detachUplinks(pinDir string) {
	d := &Datapath{pinDir: pinDir}
	detachPins(d.xdpLinkPins())
}

// detachPodLinks detaches the pod programs whose link pins are still
// under pinDir (drainLocal moves those of live flows away first).
func detachPodLinks(pinDir string) {
	d := &Datapath{pinDir: pinDir}
	detachPins(d.podLinkPins())
}

func detachPins(pins []string) {
	for _, pin := range pins {
		if _, _, legacy := parseTCPin(pin); legacy {
			detachTCPin(pin)
			continue
		}
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			l.Detach()
			l.Close()
		}
		os.Remove(pin)
	}
}

func (d *Datapath) xdpLinkPins() []string {
	pins, _ := filepath.Glob(filepath.Join(d.pinDir, pinXDPLinkPrefix+"*"))
	return pins
}

func (d *Datapath) podLinkPins() []string {
	entries, _ := os.ReadDir(filepath.Join(d.pinDir, dirPodLinks))
	var pins []string
	for _, e := range entries {
		pins = append(pins, filepath.Join(d.pinDir, dirPodLinks, e.Name()))
	}
	return pins
}

func (d *Datapath) pinnedProgram(name string) (*ebpf.Program, error) {
	p, err := ebpf.LoadPinnedProgram(filepath.Join(d.pinDir, name), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errXDPNotLoaded
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned program %s: %w", name, err)
	}
	return p, nil
}

// ------------------------------------------------------------- uplinks

// XDPMode is how an XDP program runs on an interface.
type XDPMode string

const (
	// XDPNative runs in the driver, before any socket buffer exists.
	XDPNative XDPMode = "native"
	// XDPGeneric runs on the socket buffer: any driver, little gain.
	XDPGeneric XDPMode = "generic"
)

func (m XDPMode) flags() link.XDPAttachFlags {
	if m == XDPGeneric {
		return link.XDPGenericMode
	}
	return link.XDPDriverMode
}

func (m XDPMode) code() uint32 {
	if m == XDPGeneric {
		return uint32(xdpUplinkModeUPLINK_GENERIC)
	}
	return uint32(xdpUplinkModeUPLINK_NATIVE)
}

func modeOf(code uint32) XDPMode {
	if code == uint32(xdpUplinkModeUPLINK_GENERIC) {
		return XDPGeneric
	}
	return XDPNative
}

// XDPUplink is an interface with the XDP program attached.
type XDPUplink struct {
	Name    string  `json:"name"`
	Ifindex int     `json:"ifindex"`
	Mode    XDPMode `json:"mode"`
}

func (d *Datapath) xdpLinkPin(ifindex int) string {
	return filepath.Join(d.pinDir, pinXDPLinkPrefix+strconv.Itoa(ifindex))
}

// AttachXDP attaches the uplink program to ifname in the caller's network
// namespace and pins the link, so that it outlives the process. Mode ""
// asks for native mode and falls back to generic when the driver lacks
// it. Attaching again is a no-op (it moves the link to the loaded program)
// unless another mode is asked for explicitly, which re-attaches. It
// returns the mode in use.
//
// XDP bypasses netfilter: traffic it redirects is seen by no iptables or
// nftables rule of the node.
func (d *Datapath) AttachXDP(ifname string, mode XDPMode) (XDPMode, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return "", err
	}
	if mode != "" && mode != XDPNative && mode != XDPGeneric {
		return "", fmt.Errorf("attach XDP to %s: unknown mode %q (want native or generic)", ifname, mode)
	}
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return "", fmt.Errorf("attach XDP to %s: %w", ifname, err)
	}
	prog, err := d.pinnedProgram(pinXDPProgUplink)
	if err != nil {
		return "", err
	}
	defer prog.Close()
	pin := d.xdpLinkPin(iface.Index)

	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := l.Info()
		var up xdpUplink
		lerr := x.uplinks.Lookup(uint32(iface.Index), &up)
		if ierr == nil && info.XDP() != nil && info.XDP().Ifindex == uint32(iface.Index) && lerr == nil &&
			(mode == "" || mode == modeOf(up.Mode)) {
			defer l.Close()
			if err := l.Update(prog); err != nil {
				return "", fmt.Errorf("attach XDP to %s: update link: %w", ifname, err)
			}
			return modeOf(up.Mode), d.recordUplink(iface, modeOf(up.Mode))
		}
		// Another mode, a vanished device whose index came back, or a
		// link we have no record of: start over.
		l.Detach()
		l.Close()
		os.Remove(pin)
	}

	try := []XDPMode{mode}
	if mode == "" {
		try = []XDPMode{XDPNative, XDPGeneric}
	}
	var errs []error
	for _, m := range try {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: m.flags()})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m, err))
			continue
		}
		defer l.Close()
		if err := replacePin(l, pin); err != nil {
			l.Detach()
			return "", fmt.Errorf("attach XDP to %s: %w", ifname, err)
		}
		if err := d.recordUplink(iface, m); err != nil {
			l.Detach()
			os.Remove(pin)
			return "", err
		}
		return m, nil
	}
	return "", fmt.Errorf("attach XDP to %s: %w", ifname, errors.Join(errs...))
}

func (d *Datapath) recordUplink(iface *net.Interface, mode XDPMode) error {
	var up xdpUplink
	up.Mode = mode.code()
	for i := 0; i < len(iface.Name) && i < len(up.Name)-1; i++ {
		up.Name[i] = int8(iface.Name[i])
	}
	if err := d.xdp.uplinks.Put(uint32(iface.Index), &up); err != nil {
		return fmt.Errorf("record uplink %s: %w", iface.Name, err)
	}
	return nil
}

// DetachXDP detaches the uplink program from ifname (in the caller's
// network namespace) and forgets the uplink and its flows; when no uplink
// is left, the flow table is flushed. An interface without Patu's XDP is
// not an error.
func (d *Datapath) DetachXDP(ifname string) error {
	x, err := d.xdpMaps()
	if err != nil {
		return err
	}
	ifindex := 0
	if iface, err := net.InterfaceByName(ifname); err == nil {
		ifindex = iface.Index
	} else {
		// Gone: find it by the name it was recorded with.
		ups, err := d.XDPUplinks()
		if err != nil {
			return err
		}
		for _, u := range ups {
			if u.Name == ifname {
				ifindex = u.Ifindex
			}
		}
		if ifindex == 0 {
			return nil
		}
	}
	pin := d.xdpLinkPin(ifindex)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		// Detach explicitly: a process holding the link must not keep
		// the program on the wire.
		err := l.Detach()
		l.Close()
		if err != nil && !defunctErr(err) {
			return fmt.Errorf("detach XDP from %s: %w", ifname, err)
		}
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("detach XDP from %s: %w", ifname, err)
	}
	if err := x.uplinks.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forget uplink %s: %w", ifname, err)
	}
	left, err := countKeys(x.uplinks)
	if err != nil {
		return err
	}
	_, err = d.deleteFlows(func(k xdpFlowKey, f xdpFlow) bool {
		return left == 0 || f.Uplink == uint32(ifindex)
	})
	return err
}

// defunctErr: detaching a link whose device is gone fails with ENOLINK
// or EINVAL; it is detached either way.
func defunctErr(err error) bool {
	return errors.Is(err, unix.ENOLINK) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV)
}

// XDPUplinks lists the interfaces with the XDP program attached.
func (d *Datapath) XDPUplinks() ([]XDPUplink, error) {
	x, err := d.xdpMaps()
	if err != nil {
		return nil, err
	}
	var (
		k   uint32
		v   xdpUplink
		out []XDPUplink
	)
	it := x.uplinks.Iterate()
	for it.Next(&k, &v) {
		out = append(out, XDPUplink{Name: cString(v.Name[:]), Ifindex: int(k), Mode: modeOf(v.Mode)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list uplinks: %w", err)
	}
	return out, nil
}

func cString(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// ------------------------------------------------------ pods' host veths

func (d *Datapath) podLinkPin(ifindex uint32) string {
	return filepath.Join(d.pinDir, dirPodLinks, strconv.FormatUint(uint64(ifindex), 10))
}

// AttachPod attaches the pod program (tcx ingress, or clsact + cls_bpf
// where the kernel has no tcx or the load asked for legacy tc) to a pod's
// host-side veth, hostIfindex in the caller's network namespace, and pins
// the link (the program, for legacy tc). It is idempotent. The pod's TCP with other registered pods then takes
// the local packet path, and replies of flows XDP delivered to it go
// back out past the normal path; every other packet it sends costs a hash
// and an LRU lookup.
func (d *Datapath) AttachPod(hostIfindex uint32) error {
	if _, err := d.xdpMaps(); err != nil {
		return err
	}
	prog, err := d.pinnedProgram(pinProgFromPod)
	if err != nil {
		return err
	}
	defer prog.Close()
	if d.legacyTC() {
		if err := d.attachPodTC(hostIfindex, prog); err != nil {
			return fmt.Errorf("attach pod program to ifindex %d: %w", hostIfindex, err)
		}
		return nil
	}
	if ns, err := netnsInode(); err == nil {
		// Attached with legacy tc by a load before: tcx takes over.
		if err := detachTCPin(d.tcPin(ns, hostIfindex)); err != nil {
			return fmt.Errorf("attach pod program to ifindex %d: %w", hostIfindex, err)
		}
	}
	pin := d.podLinkPin(hostIfindex)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		info, ierr := l.Info()
		if ierr == nil && info.TCX() != nil && info.TCX().Ifindex == hostIfindex {
			defer l.Close()
			if err := l.Update(prog); err != nil {
				return fmt.Errorf("attach pod program to ifindex %d: update link: %w", hostIfindex, err)
			}
			return nil
		}
		l.Detach()
		l.Close()
		os.Remove(pin)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: int(hostIfindex), Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("attach pod program to ifindex %d: %w", hostIfindex, err)
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		l.Detach()
		return fmt.Errorf("attach pod program to ifindex %d: %w", hostIfindex, err)
	}
	if err := replacePin(l, pin); err != nil {
		l.Detach()
		return fmt.Errorf("attach pod program to ifindex %d: %w", hostIfindex, err)
	}
	return nil
}

// DetachPod detaches the pod program from a pod's host-side veth. A veth
// that is gone, or has no program, is not an error.
func (d *Datapath) DetachPod(hostIfindex uint32) error {
	if ns, err := netnsInode(); err == nil {
		if err := detachTCPin(d.tcPin(ns, hostIfindex)); err != nil {
			return fmt.Errorf("detach pod program from ifindex %d: %w", hostIfindex, err)
		}
	}
	pin := d.podLinkPin(hostIfindex)
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		os.Remove(pin)
		return nil
	}
	derr := l.Detach()
	l.Close()
	if derr != nil && !defunctErr(derr) {
		return fmt.Errorf("detach pod program from ifindex %d: %w", hostIfindex, derr)
	}
	if err := os.Remove(pin); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("detach pod program from ifindex %d: %w", hostIfindex, err)
	}
	return nil
}

// addrWords converts a 16-byte address to the programs' __u32[4].
func addrWords(b [16]byte) [4]uint32 {
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

func wordsAddr(w [4]uint32) [16]byte {
	var b [16]byte
	for i, v := range w {
		binary.NativeEndian.PutUint32(b[4*i:], v)
	}
	return b
}

// htons and ntohs convert ports to and from the network order the
// programs keep them in.
func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 { return htons(p) }
