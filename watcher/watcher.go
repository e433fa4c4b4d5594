package watcher

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/pods"
	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/cri"
	"github.com/patu-dev/patu/veth"
)

// Runtime is where the desired state comes from: the CRI lists
// (*cri.Client).
type Runtime interface {
	Sandboxes(ctx context.Context) ([]cri.Sandbox, error)
	Sandbox(ctx context.Context, id string) (cri.Sandbox, error)
	SandboxInfo(ctx context.Context, id string) (cri.SandboxInfo, error)
	Containers(ctx context.Context) ([]cri.Container, error)
	ContainerPid(ctx context.Context, id string) (int, error)
}

// Source is an event stream. Watch calls fn for each event until the
// stream ends, and returns why: ctx's error when ctx is done, an error
// wrapping runtime.ErrUnsupported when the runtime does not serve the
// stream, any other error when it broke.
type Source interface {
	Name() string
	Watch(ctx context.Context, fn func(runtime.Event)) error
}

// Config configures a Watcher.
type Config struct {
	Datapath *bpf.Datapath
	Runtime  Runtime
	// Sources are tried in order; the first one the runtime serves is used.
	Sources []Source
	// Resync is the period of the full reconcile that runs even without
	// events (default 5 minutes).
	Resync time.Duration
	// Poll is the period of reconciles when the runtime serves none of
	// the Sources (default 5s): they stand in for events.
	Poll time.Duration
	// MinInterval is the least time between two reconciles, however many
	// events arrive (default 50ms).
	MinInterval time.Duration
	// Grace is how long a pod recorded by the CNI plugin may stay without
	// the runtime listing it as ready: its sandbox is still being created
	// (default 2 minutes).
	Grace time.Duration
	// Cgroup2 is the cgroup v2 mount (found when empty).
	Cgroup2 string
	// OnIdle, when set, is called once when no reconcile has run for a
	// while after some did: the daemon returns memory to the OS there.
	OnIdle  func()
	Log     *slog.Logger
	Metrics *Metrics
}

// Watcher keeps the data plane's pods in step with the runtime.
type Watcher struct {
	cfg   Config
	log   *slog.Logger
	m     *Metrics
	dirty chan struct{}
	ready chan struct{}
	born  time.Time // when New made the watcher

	// write serialises changes to the data plane between the reconcile
	// and early attaches; taken before mu, never while holding it, and
	// with it the pin directory's lock that other processes' writers
	// (patu-cni, patu hook) take (lockWrite).
	write sync.Mutex
	mu    sync.Mutex
	pods  map[string]*podState
	// hostNet are ready sandboxes in the node's network namespace,
	// remembered so that each reconcile does not ask about them again.
	hostNet map[string]bool      // by sandbox id, ready pods only
	ctrs    map[string]*ctrState // by container id, of ready pods
}

type podState struct {
	id        string
	netIno    uint64 // inode of the sandbox's network namespace
	podCgroup string // "" when each container has its own cgroup
	netns     string
	veth      veth.Pair // zero when unknown
	optOut    bool
	noXDP     bool
	socket    bool      // opted in to the socket path
	readyAt   time.Time // when its cgroups first covered the pod
}

type ctrState struct {
	sandbox   string
	pid       int
	cgroup    string
	coveredAt time.Time // when its cgroup was first known attached
	startedAt time.Time
	gapDone   bool
}

// New returns a watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.Datapath == nil || cfg.Runtime == nil {
		return nil, errors.New("watcher needs a datapath and a runtime")
	}
	if cfg.Resync == 0 {
		cfg.Resync = 5 * time.Minute
	}
	if cfg.MinInterval == 0 {
		cfg.MinInterval = 50 * time.Millisecond
	}
	if cfg.Poll == 0 {
		cfg.Poll = 5 * time.Second
	}
	if cfg.Grace == 0 {
		cfg.Grace = 2 * time.Minute
	}
	if cfg.Cgroup2 == "" {
		mnt, err := cgroup.Mount2()
		if err != nil {
			return nil, err
		}
		cfg.Cgroup2 = mnt
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	return &Watcher{
		cfg:     cfg,
		log:     cfg.Log,
		m:       cfg.Metrics,
		born:    time.Now(),
		dirty:   make(chan struct{}, 1),
		ready:   make(chan struct{}),
		pods:    map[string]*podState{},
		hostNet: map[string]bool{},
		ctrs:    map[string]*ctrState{},
	}, nil
}

// Run reconciles at once, then on events, periodically, and after every
// reconnect of the event stream, until ctx is done. Failures are retried
// with backoff; Run returns only when ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	go w.watchEvents(ctx)
	w.trigger()
	resync := time.NewTimer(w.cfg.Resync)
	defer resync.Stop()
	// idle fires once after a burst of reconciles has settled; it is
	// stopped otherwise, so an idle watcher has no timer but resync.
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	defer idle.Stop()
	retry := &runtime.Backoff{Min: 200 * time.Millisecond}
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.dirty:
		case <-resync.C:
		case <-idle.C:
			if w.cfg.OnIdle != nil {
				w.cfg.OnIdle()
			}
			continue
		}
		if wait := w.cfg.MinInterval - time.Since(last); wait > 0 {
			// Let a burst of events collapse into one reconcile.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		// Events that arrived until now are covered by this run.
		select {
		case <-w.dirty:
		default:
		}
		last = time.Now()
		err := w.Reconcile(ctx)
		resync.Reset(w.cfg.Resync)
		idle.Reset(idleAfter)
		if err == nil {
			retry.Reset()
			select {
			case <-w.ready:
			default:
				close(w.ready)
			}
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		d := retry.Next()
		w.log.Warn("reconcile failed", "error", err, "retry_in", d)
		if !resync.Stop() {
			select {
			case <-resync.C:
			default:
			}
		}
		resync.Reset(d)
	}
}

// idleAfter is how long after the last reconcile OnIdle runs.
const idleAfter = 5 * time.Second

// Ready is closed after the first reconcile that succeeded.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Metrics returns the watcher's metrics.
func (w *Watcher) Metrics() *Metrics { return w.m }

func (w *Watcher) trigger() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// watchEvents follows the first source the runtime serves, reconnecting
// with backoff when its stream ends. A reconnect triggers a reconcile,
// since events may have been lost meanwhile. When no source is served (a
// CRI-O with pod events off), it reconciles every Poll instead and asks
// the sources again each time: a runtime restarted with events gets them.
func (w *Watcher) watchEvents(ctx context.Context) {
	if len(w.cfg.Sources) == 0 {
		w.log.Info("no event source: reconciling periodically only", "resync", w.cfg.Resync)
		return
	}
	retry := &runtime.Backoff{Min: 200 * time.Millisecond}
	i := 0
	polling := false
	for ctx.Err() == nil {
		src := w.cfg.Sources[i]
		if !polling {
			w.log.Info("watching runtime events", "source", src.Name())
		}
		connected := false
		err := src.Watch(ctx, func(ev runtime.Event) {
			if !connected {
				connected = true
				w.trigger()
				if polling {
					polling = false
					w.log.Info("runtime events are served again: polling stops", "source", src.Name())
				}
			}
			w.m.event(src.Name())
			w.handle(ctx, ev)
		})
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, runtime.ErrUnsupported) && i+1 < len(w.cfg.Sources) {
			if !polling {
				w.log.Info("event source not served, trying the next", "source", src.Name(), "error", err)
			}
			i++
			continue
		}
		d := retry.Next()
		if errors.Is(err, runtime.ErrUnsupported) {
			d = w.cfg.Poll
			if !polling {
				polling = true
				w.log.Warn("the runtime serves no event source: reconciling periodically instead, "+
					"so pods are registered up to one period late", "period", d, "error", err)
			}
		} else {
			polling = false
			w.m.reconnect()
			w.log.Warn("event stream ended, reconnecting", "source", src.Name(), "error", err, "retry_in", d)
		}
		w.trigger()
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		// After a runtime restart, prefer the first source again.
		i = 0
	}
}

// handle reacts to one event. A new container's task is attached at once
// when it joins a known pod whose containers have their own cgroups:
// /tasks/create comes before the app process is released, so this is what
// makes redirect live before the app runs. Everything else waits for the
// reconcile the event triggers. Replayed or unknown events are harmless:
// they can only cause a reconcile, or an attach that the reconcile checks.
func (w *Watcher) handle(ctx context.Context, ev runtime.Event) {
	defer w.trigger()
	w.log.Debug("event", "kind", ev.Kind, "id", ev.ID, "sandbox", ev.SandboxID, "pid", ev.Pid, "at", ev.Time, "source", ev.Source)
	switch ev.Kind {
	case runtime.ContainerStarted:
		if ev.Time.Before(w.born) {
			// A replayed event (containerd 2.x queues them for the next
			// subscriber): the container ran before the watcher did, so
			// its gap says nothing about the watcher.
			break
		}
		w.mu.Lock()
		if c := w.ctrs[ev.ID]; c != nil && c.startedAt.IsZero() {
			c.startedAt = ev.Time
			w.observeGap(c)
		} else if c == nil {
			w.ctrs[ev.ID] = &ctrState{startedAt: ev.Time}
		}
		w.mu.Unlock()
	case runtime.ContainerCreated:
		if ev.Pid > 0 && !w.attachEarly(ev) && ev.SandboxID != "" {
			// Its pod is not registered yet (the reconcile its start
			// triggered has not run): register it now, this container's
			// cgroup included, rather than after the app started.
			if err := w.syncOne(ctx, ev.SandboxID); err != nil {
				w.log.Debug("early sync failed; the reconcile retries", "sandbox", ev.SandboxID, "error", err)
			}
		}
	}
}

// attachEarly reports whether the container's pod was known.
func (w *Watcher) attachEarly(ev runtime.Event) bool {
	ino, err := netnsIno(ev.Pid)
	if err != nil {
		return true // exited already: nothing to attach
	}
	dir, err := cgroup.OfPid(w.cfg.Cgroup2, ev.Pid)
	if err != nil {
		return true
	}
	w.mu.Lock()
	var pod *podState
	for _, p := range w.pods {
		if p.netIno == ino {
			pod = p
			break
		}
	}
	c := w.ctrs[ev.ID]
	if c == nil {
		c = &ctrState{}
		w.ctrs[ev.ID] = c
	}
	// Cached for the reconcile this event triggers, which then need not
	// wait for the container to run to learn its pid.
	c.pid, c.cgroup = ev.Pid, dir
	if ev.SandboxID != "" {
		c.sandbox = ev.SandboxID
	}
	if pod == nil || pod.optOut || pod.podCgroup != "" {
		// Not known yet, nothing to do, or covered by the pod cgroup
		// already.
		w.mu.Unlock()
		return pod != nil
	}
	c.sandbox = pod.id
	dirs := w.containerCgroups(pod.id)
	w.mu.Unlock()

	unlock, err := w.lockWrite()
	if err == nil {
		err = pods.SetCgroups(w.cfg.Datapath, pod.id, dirs)
		unlock()
	}
	if err != nil {
		w.log.Debug("early attach failed; the reconcile retries", "sandbox", pod.id, "container", ev.ID, "error", err)
		return true
	}
	w.mu.Lock()
	if c.coveredAt.IsZero() { // a reconcile may have attached it first
		c.coveredAt = time.Now()
	}
	w.observeGap(c)
	w.mu.Unlock()
	w.log.Debug("attached container before start", "sandbox", pod.id, "container", ev.ID, "cgroup", dir)
	return true
}

// syncOne registers one sandbox and attaches the cgroups known for it,
// without a full list: the fast path for a pod's first container.
func (w *Watcher) syncOne(ctx context.Context, id string) error {
	s, err := w.cfg.Runtime.Sandbox(ctx, id)
	if err != nil {
		return err
	}
	if !s.Ready || len(s.IPs) == 0 {
		return nil
	}
	return w.syncPod(ctx, s, nil, false)
}

// containerCgroups lists the known cgroups of a pod's containers. w.mu held.
func (w *Watcher) containerCgroups(sandbox string) []string {
	var dirs []string
	for _, c := range w.ctrs {
		if c.sandbox == sandbox && c.cgroup != "" && !slices.Contains(dirs, c.cgroup) {
			dirs = append(dirs, c.cgroup)
		}
	}
	slices.Sort(dirs)
	return dirs
}

// observeGap records, once per container, how long after its start its
// sockets became eligible (negative: before it started). w.mu held.
func (w *Watcher) observeGap(c *ctrState) {
	if c.gapDone || c.coveredAt.IsZero() || c.startedAt.IsZero() {
		return
	}
	c.gapDone = true
	gap := c.coveredAt.Sub(c.startedAt)
	mode := ModeContainer
	if p := w.pods[c.sandbox]; p != nil && p.podCgroup != "" {
		mode = ModePod
	}
	w.m.attachGap(mode, gap)
	w.log.Debug("start-to-attach gap", "sandbox", c.sandbox, "pid", c.pid, "mode", mode, "gap", gap)
}

// Reconcile makes the data plane match the runtime: every ready sandbox
// with an address is registered, with its cgroups attached, and nothing
// else is. It is idempotent.
func (w *Watcher) Reconcile(ctx context.Context) error {
	start := time.Now()
	err := w.reconcile(ctx)
	w.m.reconciled(time.Since(start), err)
	return err
}

func (w *Watcher) reconcile(ctx context.Context) error {
	rt := w.cfg.Runtime
	sandboxes, err := rt.Sandboxes(ctx)
	if err != nil {
		return fmt.Errorf("list sandboxes: %w", err)
	}
	containers, err := rt.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	records, err := w.cfg.Datapath.Pods()
	if err != nil {
		return err
	}
	recs := make(map[string]bpf.Pod, len(records))
	for _, r := range records {
		recs[r.ID] = r
	}
	want := map[string]cri.Sandbox{}
	for _, s := range sandboxes {
		if s.Ready && len(s.IPs) > 0 {
			want[s.ID] = s
		}
	}

	var errs []error
	for _, s := range want {
		if err := w.syncPod(ctx, s, containers, true); err != nil {
			errs = append(errs, err)
		}
	}
	now := time.Now()
	for id, r := range recs {
		if _, ok := want[id]; ok {
			continue
		}
		if r.Source&(bpf.PodFromCNI|bpf.PodFromRuntime) == 0 {
			continue // an OCI hook's container: the hook owns it
		}
		if !r.Confirmed && now.Sub(r.Created) < w.cfg.Grace {
			continue // recorded by CNI ADD; its sandbox is not listed yet
		}
		unlock, err := w.lockWrite()
		if err == nil {
			_, err = pods.Unregister(w.cfg.Datapath, id)
			unlock()
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w.log.Info("pod removed", "sandbox", id, "pod", r.String())
	}
	if err := w.sweepOrphans(); err != nil {
		errs = append(errs, err)
	}
	w.mu.Lock()
	for id := range w.pods {
		if _, ok := want[id]; !ok {
			delete(w.pods, id)
		}
	}
	for id := range w.hostNet {
		if _, ok := want[id]; !ok {
			delete(w.hostNet, id)
		}
	}
	for id, c := range w.ctrs {
		if _, ok := want[c.sandbox]; !ok && (c.sandbox != "" || now.Sub(c.startedAt) > w.cfg.Grace) {
			delete(w.ctrs, id)
		}
	}
	w.m.setPods(len(w.pods))
	w.mu.Unlock()
	return errors.Join(errs...)
}

// syncPod registers one ready sandbox and attaches its cgroups. With
// full, containers is the complete list and containers of the pod missing
// from it are forgotten; otherwise it adds to what is known.
func (w *Watcher) syncPod(ctx context.Context, s cri.Sandbox, containers []cri.Container, full bool) error {
	w.mu.Lock()
	st, hostNet := w.pods[s.ID], w.hostNet[s.ID]
	w.mu.Unlock()
	if hostNet {
		return nil
	}
	if st == nil {
		info, err := w.cfg.Runtime.SandboxInfo(ctx, s.ID)
		if err != nil {
			return fmt.Errorf("sandbox %s: %w", s.ID, err)
		}
		st = &podState{id: s.ID}
		if info.Pid > 0 {
			if st.netIno, err = netnsIno(info.Pid); errors.Is(err, fs.ErrNotExist) {
				return nil // its pause process is gone: the sandbox is stopping
			} else if err != nil {
				return fmt.Errorf("sandbox %s: %w", s.ID, err)
			}
			if self, err := netnsIno(os.Getpid()); err == nil && self == st.netIno {
				// A host-network pod (some runtimes report the node's
				// address for it): its address is the node's, never a
				// pod endpoint.
				w.mu.Lock()
				w.hostNet[s.ID] = true
				w.mu.Unlock()
				return nil
			}
			if info.CgroupParent != "" {
				// The sandbox's own cgroup sits in the pod cgroup; taking
				// its parent works for the cgroupfs and systemd drivers.
				dir, err := cgroup.OfPid(w.cfg.Cgroup2, info.Pid)
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				} else if err != nil {
					return fmt.Errorf("sandbox %s: %w", s.ID, err)
				}
				st.podCgroup = filepath.Dir(dir)
			}
		}
		st.netns = info.Netns
		if st.netns != "" && len(s.IPs) > 0 {
			// The host veth, for the XDP path; a CNI plugin may have
			// recorded it already, and a pod without a veth
			// (macvlan, ipvlan) does without.
			if pair, err := veth.Find(st.netns, s.IPs[0]); err == nil {
				st.veth = pair
			} else {
				w.log.Debug("pod veth unknown: no XDP route", "sandbox", s.ID, "error", err)
			}
		}
	}
	st.optOut = pods.OptedOut(s.Annotations)
	st.noXDP = pods.XDPOptedOut(s.Annotations)
	st.socket = pods.SocketOptedIn(s.Annotations)

	// Containers and their cgroups, when each has its own.
	var dirs []string
	if st.podCgroup != "" {
		dirs = []string{st.podCgroup}
	}
	w.mu.Lock()
	for _, c := range containers {
		if c.SandboxID != s.ID || !live(c) {
			continue
		}
		cs := w.ctrs[c.ID]
		if cs == nil {
			cs = &ctrState{}
			w.ctrs[c.ID] = cs
		}
		cs.sandbox = s.ID
		if st.podCgroup == "" && cs.cgroup == "" {
			w.mu.Unlock()
			pid, err := w.cfg.Runtime.ContainerPid(ctx, c.ID)
			var dir string
			if err == nil && pid > 0 {
				dir, err = cgroup.OfPid(w.cfg.Cgroup2, pid)
			}
			w.mu.Lock()
			if err != nil {
				// Exited meanwhile, or not started yet: the next event
				// brings it back.
				w.log.Debug("container cgroup unknown", "container", c.ID, "error", err)
				continue
			}
			cs.pid, cs.cgroup = pid, dir
		}
	}
	w.mu.Unlock()

	// From here on the data plane changes: one writer at a time, and the
	// cgroup set is computed under the same lock that applies it, so an
	// early attach in between is never undone.
	unlock, err := w.lockWrite()
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := w.cfg.Datapath.LookupPod(s.ID)
	if err != nil && !errors.Is(err, bpf.ErrPodNotFound) {
		return err
	}
	w.mu.Lock()
	alive := map[string]bool{}
	for _, c := range containers {
		if c.SandboxID == s.ID && live(c) {
			alive[c.ID] = true
		}
	}
	for id, cs := range w.ctrs {
		if full && cs.sandbox == s.ID && !alive[id] {
			delete(w.ctrs, id)
		}
	}
	if st.podCgroup == "" {
		dirs = w.containerCgroups(s.ID)
	}
	w.mu.Unlock()
	if st.optOut {
		dirs = nil // nothing of an opted-out pod needs sockops
	}

	p := bpf.Pod{
		ID: s.ID, Namespace: s.Namespace, Name: s.Name, UID: s.UID, Netns: st.netns,
		IPs: s.IPs, NoRedirect: st.optOut, NoXDP: st.noXDP, Socket: st.socket, Source: bpf.PodFromRuntime, Confirmed: true, Created: s.CreatedAt,
		HostIfindex: st.veth.HostIndex, HostMAC: st.veth.HostMAC, PodMAC: st.veth.PodMAC,
	}
	if rec.ID == "" || !rec.Confirmed || rec.NoRedirect != p.NoRedirect || rec.NoXDP != p.NoXDP || !slices.Equal(rec.IPs, p.IPs) ||
		rec.Source&bpf.PodFromRuntime == 0 || (rec.HostIfindex == 0 && p.HostIfindex != 0) {
		var err error
		if rec, err = pods.Register(w.cfg.Datapath, p); err != nil {
			return err
		}
		w.log.Info("pod registered", "sandbox", s.ID, "pod", rec.String(), "ips", rec.IPs,
			"opt_out", rec.NoRedirect, "pod_cgroup", st.podCgroup)
	}
	if err := w.setCgroups(rec, dirs); err != nil {
		return err
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pods[s.ID] == nil {
		w.pods[s.ID] = st
	}
	if st.readyAt.IsZero() && len(dirs) > 0 {
		st.readyAt = now
	}
	for _, cs := range w.ctrs {
		if cs.sandbox != s.ID || !cs.coveredAt.IsZero() || len(dirs) == 0 {
			continue
		}
		if st.podCgroup != "" || (cs.cgroup != "" && slices.Contains(dirs, cs.cgroup)) {
			cs.coveredAt = now
			if st.podCgroup != "" {
				cs.coveredAt = st.readyAt
			}
			w.observeGap(cs)
		}
	}
	return nil
}

// lockWrite takes write and the pin directory's lock (pods.Lock): a CNI
// DEL of one pod and the daemon's registration of an address it reuses
// must not interleave.
func (w *Watcher) lockWrite() (unlock func(), err error) {
	w.write.Lock()
	release, err := pods.Lock(w.cfg.Datapath, pods.DefaultLockTimeout)
	if err != nil {
		w.write.Unlock()
		return nil, err
	}
	return func() { release(); w.write.Unlock() }, nil
}

// sweepOrphans removes the pins of attachments whose cgroup is gone and
// that no pod record owns. Writers in other processes hold the same lock
// (lockWrite), so none interleaves with this one; but a writer killed
// between pinning an attachment and recording it (a CNI plugin timed out
// by the runtime, a hook, this daemon) leaves that attachment to nobody.
func (w *Watcher) sweepOrphans() error {
	unlock, err := w.lockWrite()
	if err != nil {
		return err
	}
	defer unlock()
	atts, err := w.cfg.Datapath.Attachments()
	if err != nil {
		return err
	}
	all, err := w.cfg.Datapath.Pods()
	if err != nil {
		return err
	}
	owned := map[uint64]bool{}
	for _, p := range all {
		for _, cg := range p.Cgroups {
			owned[cg] = true
		}
	}
	for _, a := range atts {
		if a.Gone && !owned[a.CgroupID] {
			if err := w.cfg.Datapath.DetachID(a.CgroupID); err != nil {
				return err
			}
		}
	}
	return nil
}

// setCgroups attaches dirs to the pod when its recorded set differs.
func (w *Watcher) setCgroups(rec bpf.Pod, dirs []string) error {
	ids := make([]uint64, 0, len(dirs))
	for _, d := range dirs {
		id, err := cgroup.ID(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue // its container is gone; the next list drops it
		}
		if err != nil {
			return fmt.Errorf("pod %s: %w", rec, err)
		}
		ids = append(ids, id)
	}
	have := slices.Clone(rec.Cgroups)
	slices.Sort(have)
	slices.Sort(ids)
	if slices.Equal(have, ids) && w.linksPresent(ids) {
		return nil
	}
	if err := pods.SetCgroups(w.cfg.Datapath, rec.ID, dirs); err != nil {
		return err
	}
	w.log.Info("cgroups attached", "sandbox", rec.ID, "pod", rec.String(), "cgroups", dirs)
	return nil
}

// linksPresent checks the pins of the cgroup links: someone may have run
// patu detach, or a crash may have lost one.
func (w *Watcher) linksPresent(ids []uint64) bool {
	for _, id := range ids {
		if !w.cfg.Datapath.IsAttached(id) {
			return false
		}
	}
	return true
}

// live is true for created and running containers: the ones that have, or
// are about to have, processes.
func live(c cri.Container) bool {
	return c.State == cri.StateCreated || c.State == cri.StateRunning
}

func netnsIno(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &st); err != nil {
		return 0, fmt.Errorf("netns of pid %d: %w", pid, err)
	}
	return st.Ino, nil
}
