package hook

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/netns"
	"github.com/patu-dev/patu/pods"
	"github.com/patu-dev/patu/veth"
)

// Annotations the hook reads besides pods.OptOutAnnotation. CRI-O sets the
// Kubernetes ones on every container; with podman a user may set them with
// --annotation. podman sets SandboxAnnotation on the app containers of a
// pod (to the infra container's id), CRI-O on every container.
const (
	PodNamespaceAnnotation = "io.kubernetes.pod.namespace"
	PodNameAnnotation      = "io.kubernetes.pod.name"
	PodUIDAnnotation       = "io.kubernetes.pod.uid"
	SandboxAnnotation      = "io.kubernetes.cri-o.SandboxID"
)

// DefaultNamespace is the namespace of records whose container names none.
const DefaultNamespace = "podman"

// DefaultLockTimeout bounds the wait for other writers of the same pin
// directory (pods.Lock). Each holds the lock for about a millisecond.
const DefaultLockTimeout = pods.DefaultLockTimeout

// Options configures Run.
type Options struct {
	// PinDir is Patu's bpffs directory (bpf.DefaultPinDir when empty).
	PinDir string
	Stage  Stage
	State  State
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// LockTimeout bounds the wait for the pin directory's lock
	// (DefaultLockTimeout when zero).
	LockTimeout time.Duration
}

// Action is what Run did.
type Action string

// Actions of a Result.
const (
	Registered   Action = "registered"
	Unregistered Action = "unregistered"
	Skipped      Action = "skipped"
)

// Result says what Run did and to which record.
type Result struct {
	Action Action
	// Reason says why the container was skipped.
	Reason string
	// Pod is the record written (createRuntime) or removed (poststop).
	Pod bpf.Pod
}

// Run does what the stage asks for the container of the state. Every error
// it returns is a failure inside Patu: the caller logs and counts it and
// lets the container go on.
func Run(o Options) (Result, error) {
	if o.PinDir == "" {
		o.PinDir = bpf.DefaultPinDir
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if len(o.State.ID) > bpf.MaxPodIDLen {
		return Result{}, fmt.Errorf("container id %s… is longer than the %d bytes a record holds", shortID(o.State.ID), bpf.MaxPodIDLen)
	}
	switch o.Stage {
	case CreateRuntime, Prestart:
		return create(o)
	case Poststop:
		return remove(o)
	}
	return Result{}, fmt.Errorf("%w: unknown stage %q", ErrBadInput, o.Stage)
}

func create(o Options) (Result, error) {
	st := o.State
	nsPath, err := netnsOf(st.Bundle, st.Pid)
	if err != nil {
		return Result{}, err
	}
	if nsPath == "" {
		return Result{Action: Skipped, Reason: "host network"}, nil
	}
	// A namespace given by path may still be the runtime's own.
	if same, err := sameNetns(nsPath, "/proc/self/ns/net"); err != nil {
		return Result{}, err
	} else if same {
		return Result{Action: Skipped, Reason: "host network"}, nil
	}
	ips, err := addrsIn(nsPath)
	if err != nil {
		return Result{}, err
	}
	if len(ips) == 0 {
		return Result{Action: Skipped, Reason: "no addresses in " + nsPath}, nil
	}
	p := Record(st, nsPath, ips, o.Now())
	// The host veth, for the XDP path: netavark and CNI bridges make one;
	// slirp4netns, macvlan and friends do not, and do without.
	if pair, err := veth.Find(nsPath, ips[0]); err == nil {
		p.HostIfindex, p.HostMAC, p.PodMAC = pair.HostIndex, pair.HostMAC, pair.PodMAC
	}
	var cgDir string
	if !p.NoRedirect {
		mnt, err := cgroup.Mount2()
		if err != nil {
			return Result{}, err
		}
		if cgDir, err = cgroup.OfPid(mnt, st.Pid); err != nil {
			return Result{}, err
		}
	}

	dp, unlock, err := openLocked(o.PinDir, o.LockTimeout)
	if err != nil {
		return Result{}, err
	}
	defer dp.Close()
	defer unlock()
	if p, err = pods.Register(dp, p); err != nil {
		return Result{Pod: p}, err
	}
	if cgDir != "" {
		if err := pods.SetCgroups(dp, p.ID, []string{cgDir}); err != nil {
			return Result{Pod: p}, err
		}
		if p, err = dp.LookupPod(p.ID); err != nil {
			return Result{Pod: p}, err
		}
	}
	if err := syncEndpoints(dp, p.IPs); err != nil {
		return Result{Pod: p}, err
	}
	return Result{Action: Registered, Pod: p}, nil
}

func remove(o Options) (Result, error) {
	dp, unlock, err := openLocked(o.PinDir, o.LockTimeout)
	if errors.Is(err, bpf.ErrNotLoaded) {
		// Unloaded since the container started: nothing of it is left.
		return Result{Action: Skipped, Reason: "patu is not loaded"}, nil
	}
	if err != nil {
		return Result{}, err
	}
	defer dp.Close()
	defer unlock()
	p, err := dp.LookupPod(o.State.ID)
	if errors.Is(err, bpf.ErrPodNotFound) {
		return Result{Action: Skipped, Reason: "not recorded"}, nil
	}
	if err != nil {
		return Result{}, err
	}
	if p.Source != bpf.PodFromHook {
		// The CNI plugin or the watcher recorded it too (CRI-O with
		// patu-cni: the sandbox id is the infra container's): they
		// remove it, and a record they hold must outlive this hook.
		return Result{Action: Skipped, Reason: "recorded by others too", Pod: p}, nil
	}
	if _, err := pods.Unregister(dp, p.ID); err != nil {
		return Result{Pod: p}, err
	}
	if err := syncEndpoints(dp, p.IPs); err != nil {
		return Result{Pod: p}, err
	}
	return Result{Action: Unregistered, Pod: p}, nil
}

// Record returns the pod record of a container whose netns at nsPath holds
// ips. Names come from the annotations: the Kubernetes pod namespace and
// name when present (CRI-O), else DefaultNamespace and the short id of the
// container's sandbox (podman pod members: the infra container's), else
// its own short id. A name a record cannot hold gives way to the short id.
func Record(st State, nsPath string, ips []netip.Addr, now time.Time) bpf.Pod {
	a := st.Annotations
	p := bpf.Pod{
		ID:         st.ID,
		Namespace:  DefaultNamespace,
		Name:       shortID(st.ID),
		Netns:      nsPath,
		IPs:        ips,
		NoRedirect: pods.OptedOut(a),
		NoXDP:      pods.XDPOptedOut(a),
		Socket:     pods.SocketOptedIn(a),
		Source:     bpf.PodFromHook,
		Created:    now,
	}
	if sb := a[SandboxAnnotation]; sb != "" {
		p.Name = shortID(sb)
	}
	if ns, name := a[PodNamespaceAnnotation], a[PodNameAnnotation]; name != "" && fits(name, 64) && fits(ns, 64) {
		p.Name = name
		if ns != "" {
			p.Namespace = ns
		}
	}
	if uid := a[PodUIDAnnotation]; fits(uid, 48) {
		p.UID = uid
	}
	if !fits(p.Netns, 192) {
		p.Netns = "" // only shown; the record works without it
	}
	return p
}

func fits(s string, n int) bool { return len(s) <= n }

// sameNetns reports whether two namespace files are the same namespace.
func sameNetns(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		return false, fmt.Errorf("netns %s: %w", a, err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		return false, fmt.Errorf("netns %s: %w", b, err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// addrsIn returns the global unicast addresses inside the netns at path,
// IPv4 first, at most bpf.MaxPodIPs. Loopback addresses are not global.
func addrsIn(path string) ([]netip.Addr, error) {
	var addrs []netlink.Addr
	err := netns.Do(path, func() error {
		var err error
		// A dump: retried when the kernel says it changed meanwhile.
		for range 5 {
			addrs, err = netlink.AddrList(nil, netlink.FAMILY_ALL)
			if !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("addresses in %s: %w", path, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if ok && ip.IsGlobalUnicast() && a.Scope == unix.RT_SCOPE_UNIVERSE && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	slices.SortStableFunc(out, func(x, y netip.Addr) int {
		switch {
		case x.Is4() && !y.Is4():
			return -1
		case !x.Is4() && y.Is4():
			return 1
		}
		return 0
	})
	if len(out) > bpf.MaxPodIPs {
		out = out[:bpf.MaxPodIPs]
	}
	return out, nil
}

// syncEndpoints rewrites the endpoints of ips from the records that hold
// them: opted out while any holder is, named after the first. Containers
// sharing a netns each hold its addresses; pods.Register and
// pods.Unregister see one record at a time, so an opted-out app container
// would otherwise be overruled by the infra container, or outlive itself
// in the endpoint's flag. Addresses no record holds are left alone
// (Unregister deleted them).
func syncEndpoints(dp *bpf.Datapath, ips []netip.Addr) error {
	if len(ips) == 0 {
		return nil
	}
	all, err := dp.Pods()
	if err != nil {
		return err
	}
	var errs []error
	for _, ip := range ips {
		var (
			first      *bpf.Pod
			noRedirect bool
			socket     = true
		)
		for i := range all {
			if slices.Contains(all[i].IPs, ip) {
				if first == nil {
					first = &all[i]
				}
				noRedirect = noRedirect || all[i].NoRedirect
				socket = socket && all[i].Socket
			}
		}
		if first == nil {
			continue
		}
		name := first.String()
		if len(name) > 63 {
			name = name[:63]
		}
		if err := dp.AddEndpoint(bpf.Endpoint{IP: ip, Name: name, NoRedirect: noRedirect, Socket: socket}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// openLocked opens the pinned maps and takes the lock of the pin
// directory; the returned function releases it.
func openLocked(pinDir string, timeout time.Duration) (*bpf.Datapath, func(), error) {
	dp, err := bpf.Open(pinDir)
	if err != nil {
		return nil, nil, err
	}
	unlock, err := pods.Lock(dp, timeout)
	if err != nil {
		dp.Close()
		return nil, nil, err
	}
	return dp, unlock, nil
}
