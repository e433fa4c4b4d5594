package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// DefaultPinDir is where Patu pins its maps, programs and links.
const DefaultPinDir = "/sys/fs/bpf/patu"

// Pin names below the pin directory, besides the maps (pinned by their C names).
const (
	pinProgSockops = "prog_sockops"
	pinProgSkMsg   = "prog_sk_msg"
	dirCgroups     = "cgroups"
	dirProof       = "proof"
	dirDraining    = "draining"
	mapCgroups     = "patu_cgroup_paths"
)

// Options configures Load.
type Options struct {
	// PinDir is the bpffs directory holding all of Patu's pins
	// (DefaultPinDir when empty).
	PinDir string
	// BackpressureShift and BackpressureFloor set the receiver queue mark
	// above which a direction falls back to TCP: max(rcvbuf<<shift, floor).
	// Zero values select the defaults (shift 1, floor 2 MiB).
	BackpressureShift uint32
	BackpressureFloor uint32
	// ConntrackEstablished is the timeout, in ms, the local packet path
	// keeps an admitted flow's conntrack entry at (conntrack sees none of
	// its packets). Zero reads nf_conntrack_tcp_timeout_established of
	// the caller's network namespace (432000 s when conntrack is absent).
	ConntrackEstablished uint32
	// ConntrackRefresh is how often an open flow's conntrack entry is
	// given that timeout again (default 30 s); CloseGrace how long a
	// closed flow stays on the local path after RST or the second FIN
	// (default 10 s; its conntrack entry ends at once).
	ConntrackRefresh, CloseGrace time.Duration
	// BigTCP is the GSO size registration sets on each pod's interface
	// (BIG TCP: fewer, larger packets between pods), 0 to leave pods
	// alone, -1 to keep what an earlier load set. Opt-in: a pod's larger
	// packets to other nodes are cut in software where the uplink cannot
	// send them as they are.
	BigTCP int
	// RedirectUncharged makes the socket path count redirected bytes
	// itself, as it does on kernels that do not charge them to the
	// receiver (RedirectCharged), for tests on kernels that do.
	RedirectUncharged bool
	// LegacyTC attaches pods' programs with clsact + cls_bpf even where
	// the kernel has tcx: the mode kernels before 6.6 get, to test it.
	LegacyTC bool
	// TestLatePeer hides each accepted socket from senders for a random
	// time up to this long, as if its establishment lost the race with
	// the first send. Fault injection for tests only.
	TestLatePeer time.Duration
}

// Datapath is a handle on Patu's pinned maps. Close releases the handles;
// the pinned state stays in the kernel.
type Datapath struct {
	pinDir    string
	endpoints *ebpf.Map
	socks     *ebpf.Map
	sockRecs  *ebpf.Map
	counters  *ebpf.Map
	cgroups   *ebpf.Map
	pods      *ebpf.Map
	// xdp is nil when the pins predate the XDP path (see openXDP).
	xdp *xdpState
	// features is what Load probed (empty for Open).
	features Features
}

// Features returns the kernel features Load probed and used.
func (d *Datapath) Features() Features { return d.features }

// ErrSocketPathOff is returned by Attach when this kernel cannot run the
// socket path (see ProbeFeatures): the pod stays on the packet path.
var ErrSocketPathOff = errors.New("the socket path is off on this kernel (patu status names why)")

// uninstallSocketPath removes the socket path's program pins, which a
// load on a kernel that had it left, so that Attach says it is off.
// Cgroups attached then keep their links until detached.
func (d *Datapath) uninstallSocketPath() error {
	for _, name := range []string{pinProgSockops, pinProgSkMsg} {
		if err := os.Remove(filepath.Join(d.pinDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove pin %s: %w", name, err)
		}
	}
	return nil
}

// PinDir returns the bpffs directory of this datapath.
func (d *Datapath) PinDir() string { return d.pinDir }

// Close releases the map handles. Pinned state is left alone.
func (d *Datapath) Close() error {
	for _, m := range []*ebpf.Map{d.endpoints, d.socks, d.sockRecs, d.counters, d.cgroups, d.pods} {
		if m != nil {
			m.Close()
		}
	}
	d.xdp.close()
	return nil
}

// Load loads Patu's programs, creating or reusing the pinned maps under
// opts.PinDir, attaches sk_msg to the socket map and the receive proof to the
// kernel, and moves every pinned cgroup attachment to the new sockops
// program. It is idempotent: loading again, or loading a newer build,
// replaces programs in place and never deletes a live socket's map entry.
func Load(opts Options) (*Datapath, error) {
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	if opts.BackpressureShift == 0 {
		opts.BackpressureShift = 1
	}
	if opts.BackpressureFloor == 0 {
		opts.BackpressureFloor = 2 << 20
	}
	if opts.ConntrackEstablished == 0 {
		opts.ConntrackEstablished = establishedTimeoutMs()
	}
	if opts.ConntrackRefresh == 0 {
		opts.ConntrackRefresh = 30 * time.Second
	}
	if opts.CloseGrace == 0 {
		opts.CloseGrace = 10 * time.Second
	}
	if err := EnsureBPFFS(opts.PinDir); err != nil {
		return nil, err
	}
	feats := ProbeFeatures(ProbeOptions{ForceLegacyTC: opts.LegacyTC, OnlyUsed: true})
	if pp := feats.Get(FeaturePacketPath); !pp.On {
		return nil, fmt.Errorf("%w: the packet path cannot run here: %s", ErrNotSupported, pp.Reason)
	}
	if _, err := sweepDraining(opts.PinDir); err != nil {
		return nil, err
	}
	for _, d := range []string{opts.PinDir, filepath.Join(opts.PinDir, dirCgroups), filepath.Join(opts.PinDir, dirProof)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory %s: %w", d, err)
		}
	}

	spec, err := loadRedirect()
	if err != nil {
		return nil, fmt.Errorf("read embedded programs: %w", err)
	}
	// Counting them here is right on every kernel (where they are
	// charged too, the mark trips at half): the choice when the probe
	// cannot tell.
	charged := !opts.RedirectUncharged && feats.On(FeatureRedirectCharged)
	for name, v := range map[string]any{
		"rmem_charged":      boolByte(charged),
		"bp_shift":          opts.BackpressureShift,
		"bp_floor":          opts.BackpressureFloor,
		"test_late_peer_ns": uint64(opts.TestLatePeer.Nanoseconds()),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	// Without the socket path only its maps are made: the CLI, the CNI
	// plugin and status read them, and no program needs what is missing.
	socketPath := feats.On(FeatureSocketPath)
	var objs redirectObjects
	var target any = &objs
	if !socketPath {
		target = &objs.redirectMaps
	}
	err = spec.LoadAndAssign(target, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinDir}})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("load programs: pinned maps in %s are from an incompatible version (run: patu unload): %w", opts.PinDir, err)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	defer objs.redirectPrograms.Close()

	d := &Datapath{
		pinDir:    opts.PinDir,
		features:  feats,
		endpoints: objs.PatuEndpoints,
		socks:     objs.PatuSocks,
		sockRecs:  objs.PatuSockRecs,
		counters:  objs.PatuCounters,
	}
	// Not needed by any program, only by Load and the CLI.
	objs.PatuSkState.Close()
	if d.cgroups, err = openCgroupPaths(opts.PinDir); err != nil {
		d.Close()
		return nil, err
	}
	if d.pods, err = openPods(opts.PinDir); err != nil {
		d.Close()
		return nil, err
	}
	if socketPath {
		err = d.install(&objs.redirectPrograms)
	} else {
		err = d.uninstallSocketPath()
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	if err := d.loadXDP(opts); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// establishedTimeoutMs is conntrack's timeout of an established TCP
// connection in this network namespace, in ms; its default when conntrack
// is not there.
func establishedTimeoutMs() uint32 {
	const fallback = 432000
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
	s := fallback
	if err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			s = v
		}
	}
	if s > math.MaxUint32/1000 {
		s = math.MaxUint32 / 1000
	}
	return uint32(s) * 1000
}

func (d *Datapath) install(progs *redirectPrograms) error {
	// Attaching to the map replaces the previous verdict program for new
	// sockets only: each live socket keeps the program it was added with.
	err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target:  d.socks.FD(),
		Program: progs.PatuSkMsg,
		Attach:  ebpf.AttachSkMsgVerdict,
	})
	if err != nil {
		return fmt.Errorf("attach sk_msg to socket map: %w", err)
	}
	if err := replacePin(progs.PatuSkMsg, filepath.Join(d.pinDir, pinProgSkMsg)); err != nil {
		return err
	}
	if err := replacePin(progs.PatuSockops, filepath.Join(d.pinDir, pinProgSockops)); err != nil {
		return err
	}
	if err := d.updateCgroupLinks(progs.PatuSockops); err != nil {
		return err
	}
	return d.installProof(progs)
}

// installProof attaches the receive-proof tracepoint program. Its pin is
// named after the map that holds socket records, so that after an unload
// the program that keeps serving still-live sockets survives beside the one
// of a new load.
func (d *Datapath) installProof(progs *redirectPrograms) error {
	info, err := d.sockRecs.Info()
	if err != nil {
		return fmt.Errorf("socket record map info: %w", err)
	}
	id, _ := info.ID()
	l, err := link.AttachTracing(link.TracingOptions{Program: progs.PatuRecvProof, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		return fmt.Errorf("attach receive proof to tracepoint sock_recv_length: %w", err)
	}
	defer l.Close()
	return replacePin(l, filepath.Join(d.pinDir, dirProof, fmt.Sprintf("%d_recv_proof", id)))
}

type pinner interface {
	Pin(string) error
}

// replacePin pins obj at path, atomically replacing what was pinned there:
// a rename over the old pin drops the old object only after the new one is
// in place, so a link is never missing in between.
func replacePin(obj pinner, path string) error {
	tmp := path + "_new" // bpffs refuses names with dots
	os.Remove(tmp)
	if err := obj.Pin(tmp); err != nil {
		return fmt.Errorf("pin %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace pin %s: %w", path, err)
	}
	return nil
}

// Open opens the pinned maps of a loaded Patu without loading programs.
func Open(pinDir string) (*Datapath, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if err := checkBPFFS(pinDir); err != nil {
		if notLoadedNoBPFFS(pinDir, err) {
			return nil, fmt.Errorf("%w: no bpffs is mounted for %s, so nothing is pinned (patu load mounts one)", ErrNotLoaded, pinDir)
		}
		return nil, err
	}
	d := &Datapath{pinDir: pinDir}
	for name, m := range map[string]**ebpf.Map{
		"patu_endpoints": &d.endpoints,
		"patu_socks":     &d.socks,
		"patu_sock_recs": &d.sockRecs,
		"patu_counters":  &d.counters,
	} {
		pm, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if err != nil {
			d.Close()
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%w: no pinned maps in %s", ErrNotLoaded, pinDir)
			}
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		*m = pm
	}
	var err error
	if d.cgroups, err = openCgroupPaths(pinDir); err != nil {
		d.Close()
		return nil, err
	}
	if d.pods, err = openPods(pinDir); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.openXDP(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// UnloadResult says what Unload left behind and why.
type UnloadResult struct {
	// NotLoaded is set when there was nothing to unload: no pin
	// directory, or no bpffs mounted for it at all.
	NotLoaded bool
	// LiveSockets is the number of sockets still in the socket map. Their
	// connections keep working; the receive proof stays until they close.
	LiveSockets int
	// Kept is the directory holding what those sockets still need.
	Kept string
	// LiveFlows is the number of connection directions still on the
	// local packet path: their pods' programs stay attached, without
	// taking new connections, until they close (kept in KeptFlows).
	LiveFlows int
	KeptFlows string
}

// Unload detaches Patu from every cgroup and removes its pins. Live
// connections keep their path until they close: no socket map entry is
// deleted, and while such sockets remain, the receive-proof program that
// serves them stays pinned in a "draining" directory that a later Load
// or Unload removes once they are gone.
func Unload(pinDir string) (UnloadResult, error) {
	var res UnloadResult
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if err := checkBPFFS(pinDir); err != nil {
		if notLoadedNoBPFFS(pinDir, err) {
			res.NotLoaded = true
			return res, nil
		}
		return res, err
	}
	if _, err := os.Stat(pinDir); errors.Is(err, fs.ErrNotExist) {
		res.NotLoaded = true
		return res, nil
	}
	// Detach first, so no new socket is added while we look.
	cgDir := filepath.Join(pinDir, dirCgroups)
	entries, _ := os.ReadDir(cgDir)
	for _, e := range entries {
		if err := os.Remove(filepath.Join(cgDir, e.Name())); err != nil {
			return res, fmt.Errorf("detach cgroup link %s: %w", e.Name(), err)
		}
	}
	detachUplinks(pinDir)
	if err := drainLocal(pinDir, &res); err != nil {
		return res, err
	}
	detachPodLinks(pinDir)
	if socks, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "patu_socks"), nil); err == nil {
		res.LiveSockets, _ = countKeys(socks)
		if res.LiveSockets > 0 {
			info, _ := socks.Info()
			id, _ := info.ID()
			keep := filepath.Join(pinDir, dirDraining, fmt.Sprint(id))
			if err := os.MkdirAll(keep, 0o700); err != nil {
				socks.Close()
				return res, fmt.Errorf("keep receive proof: %w", err)
			}
			if err := socks.Pin(filepath.Join(keep, "patu_socks")); err != nil && !errors.Is(err, fs.ErrExist) {
				socks.Close()
				return res, fmt.Errorf("keep socket map: %w", err)
			}
			guards, _ := os.ReadDir(filepath.Join(pinDir, dirProof))
			for _, g := range guards {
				if err := os.Rename(filepath.Join(pinDir, dirProof, g.Name()), filepath.Join(keep, g.Name())); err != nil {
					socks.Close()
					return res, fmt.Errorf("keep receive proof %s: %w", g.Name(), err)
				}
			}
			res.Kept = keep
		}
		socks.Close()
	}
	if _, err := sweepDraining(pinDir); err != nil {
		return res, err
	}
	// Remove everything else; only the draining directory may remain.
	all, err := os.ReadDir(pinDir)
	if err != nil {
		return res, fmt.Errorf("read %s: %w", pinDir, err)
	}
	for _, e := range all {
		if e.Name() == dirDraining {
			continue
		}
		if err := os.RemoveAll(filepath.Join(pinDir, e.Name())); err != nil {
			return res, fmt.Errorf("remove pin %s: %w", e.Name(), err)
		}
	}
	os.Remove(filepath.Join(pinDir, dirDraining))
	os.Remove(pinDir)
	return res, nil
}

// sweepDraining removes kept receive proofs whose sockets have all closed,
// and returns how many remain.
func sweepDraining(pinDir string) (int, error) {
	base := filepath.Join(pinDir, dirDraining)
	entries, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", base, err)
	}
	left := 0
	for _, e := range entries {
		dir := filepath.Join(base, e.Name())
		if strings.HasPrefix(e.Name(), drainLocalPrefix) {
			live, err := sweepDrainingLocal(dir)
			if err != nil {
				return left, err
			}
			if live {
				left++
			}
			continue
		}
		socks, err := ebpf.LoadPinnedMap(filepath.Join(dir, "patu_socks"), nil)
		n := 0
		if err == nil {
			n, _ = countKeys(socks)
			socks.Close()
		}
		if n > 0 {
			left++
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			return left, fmt.Errorf("remove drained proof %s: %w", dir, err)
		}
	}
	return left, nil
}

func countKeys(m *ebpf.Map) (int, error) {
	n := 0
	var key, next []byte
	for {
		var err error
		if key == nil {
			next, err = m.NextKeyBytes(nil)
		} else {
			next, err = m.NextKeyBytes(key)
		}
		if err != nil {
			return n, fmt.Errorf("iterate %s: %w", m, err)
		}
		if next == nil {
			return n, nil
		}
		n++
		key = next
	}
}
