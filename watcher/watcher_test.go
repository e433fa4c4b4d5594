package watcher

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/cri"
)

const testPinDir = "/sys/fs/bpf/patu-test-watcher"

// fakeRuntime serves lists from memory; the pids, namespaces and cgroups
// behind them are real (processes in testnet pods).
type fakeRuntime struct {
	mu         sync.Mutex
	sandboxes  map[string]cri.Sandbox
	infos      map[string]cri.SandboxInfo
	containers map[string]cri.Container
	pids       map[string]int
	fail       error
	calls      int
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{sandboxes: map[string]cri.Sandbox{}, infos: map[string]cri.SandboxInfo{},
		containers: map[string]cri.Container{}, pids: map[string]int{}}
}

func (f *fakeRuntime) Sandboxes(context.Context) ([]cri.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.fail != nil {
		return nil, f.fail
	}
	var out []cri.Sandbox
	for _, s := range f.sandboxes {
		out = append(out, s)
	}
	return out, nil
}

func (f *fakeRuntime) Sandbox(_ context.Context, id string) (cri.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sandboxes[id]
	if !ok {
		return s, runtime.ErrNotFound
	}
	return s, nil
}

func (f *fakeRuntime) SandboxInfo(_ context.Context, id string) (cri.SandboxInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.infos[id]
	if !ok {
		return i, errors.New("not found")
	}
	return i, nil
}

func (f *fakeRuntime) Containers(context.Context) ([]cri.Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []cri.Container
	for _, c := range f.containers {
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeRuntime) ContainerPid(_ context.Context, id string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pids[id], nil
}

func (f *fakeRuntime) set(fn func(f *fakeRuntime)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

type fixture struct {
	net *testnet.Net
	dp  *bpf.Datapath
	rt  *fakeRuntime
	w   *Watcher
}

func newFixture(t *testing.T, prefix, subnet, subnet6 string) *fixture {
	t.Helper()
	testnet.Privileged(t)
	testnet.Sweep(prefix)
	n, err := testnet.New(testnet.Config{Prefix: prefix, Subnet4: netip.MustParsePrefix(subnet),
		Subnet6: netip.MustParsePrefix(subnet6), Pods: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	bpf.Unload(testPinDir)
	t.Cleanup(func() { bpf.Unload(testPinDir) })
	dp, err := bpf.Load(bpf.Options{PinDir: testPinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	rt := newFakeRuntime()
	w, err := New(Config{Datapath: dp, Runtime: rt, MinInterval: time.Millisecond, Grace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{net: n, dp: dp, rt: rt, w: w}
}

// process starts a long-running process in pod i's netns and cgroup, as a
// container's would be.
func (fx *fixture) process(t *testing.T, i int) int {
	t.Helper()
	cmd := fx.net.Pods[i].Command(context.Background(), "sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitInNetns(t, cmd.Process.Pid, fx.net.Pods[i].NetnsPath)
	return cmd.Process.Pid
}

// waitInNetns waits until the shim behind a pod command has entered the
// pod's namespace: until then, the process is in the test's.
func waitInNetns(t *testing.T, pid int, path string) {
	t.Helper()
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if ino, err := netnsIno(pid); err == nil && ino == want.Ino {
			return
		}
	}
	t.Fatalf("pid %d never entered %s", pid, path)
}

// addPod makes pod i a ready sandbox "sb<i>" with one live container.
func (fx *fixture) addPod(t *testing.T, i int, ann map[string]string) {
	t.Helper()
	p := fx.net.Pods[i]
	sbPid, ctrPid := fx.process(t, i), fx.process(t, i)
	id, ctr := sandboxID(i), "ctr"+sandboxID(i)
	fx.rt.set(func(f *fakeRuntime) {
		f.sandboxes[id] = cri.Sandbox{ID: id, Name: p.Name, Namespace: "test", Ready: true,
			IPs: []netip.Addr{p.IPv4}, Annotations: ann, CreatedAt: time.Now()}
		f.infos[id] = cri.SandboxInfo{Pid: sbPid, Netns: p.NetnsPath}
		f.containers[ctr] = cri.Container{ID: ctr, SandboxID: id, State: cri.StateRunning}
		f.pids[ctr] = ctrPid
	})
}

func sandboxID(i int) string { return "sb" + string(rune('0'+i)) }

func (fx *fixture) state(t *testing.T) (map[string]bpf.Pod, map[netip.Addr]bpf.Endpoint, map[uint64]string) {
	t.Helper()
	all, err := fx.dp.Pods()
	if err != nil {
		t.Fatal(err)
	}
	recs := map[string]bpf.Pod{}
	for _, p := range all {
		recs[p.ID] = p
	}
	eps, _ := fx.dp.Endpoints()
	epm := map[netip.Addr]bpf.Endpoint{}
	for _, e := range eps {
		epm[e.IP] = e
	}
	atts, _ := fx.dp.Attachments()
	attm := map[uint64]string{}
	for _, a := range atts {
		attm[a.CgroupID] = a.Path
	}
	return recs, epm, attm
}

// TestReconcileConverges: ready sandboxes are registered with their
// containers' cgroups attached; opted-out pods get no attachment; removed
// sandboxes, stale unconfirmed CNI records and their endpoints go; a fresh
// CNI record and a hook's record stay; a second reconcile changes nothing.
func TestReconcileConverges(t *testing.T) {
	fx := newFixture(t, "wtrc", "10.206.1.0/24", "fd00:206:1::/64")
	ctx := context.Background()
	fx.addPod(t, 0, nil)
	fx.addPod(t, 1, map[string]string{"patu.io/redirect": "false"})
	// Leftovers a crashed run or a lost DEL could leave.
	stale := bpf.Pod{ID: "stale", IPs: []netip.Addr{netip.MustParseAddr("10.206.1.200")},
		Source: bpf.PodFromCNI, Created: time.Now().Add(-time.Hour)}
	fresh := bpf.Pod{ID: "fresh", IPs: []netip.Addr{netip.MustParseAddr("10.206.1.201")},
		Source: bpf.PodFromCNI, Created: time.Now()}
	hook := bpf.Pod{ID: "hook", IPs: []netip.Addr{netip.MustParseAddr("10.206.1.202")},
		Source: bpf.PodFromHook, Created: time.Now().Add(-time.Hour)}
	for _, p := range []bpf.Pod{stale, fresh, hook} {
		if err := fx.dp.PutPod(p, bpf.PodCreate); err != nil {
			t.Fatal(err)
		}
		if err := fx.dp.AddEndpoint(bpf.Endpoint{IP: p.IPs[0]}); err != nil {
			t.Fatal(err)
		}
	}

	if err := fx.w.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	recs, eps, atts := fx.state(t)
	if _, ok := recs["stale"]; ok {
		t.Error("stale unconfirmed CNI record survived")
	}
	if _, ok := eps[stale.IPs[0]]; ok {
		t.Error("stale record's endpoint survived")
	}
	for _, id := range []string{"fresh", "hook", "sb0", "sb1"} {
		if _, ok := recs[id]; !ok {
			t.Errorf("record %s missing", id)
		}
	}
	p0, p1 := fx.net.Pods[0], fx.net.Pods[1]
	if e, ok := eps[p0.IPv4]; !ok || e.NoRedirect {
		t.Errorf("pod 0 endpoint %+v", e)
	}
	if e, ok := eps[p1.IPv4]; !ok || !e.NoRedirect {
		t.Errorf("opted-out pod 1 endpoint %+v, want NoRedirect", e)
	}
	if len(atts) != 1 || atts[recs["sb0"].Cgroups[0]] != p0.CgroupDir {
		t.Errorf("attachments %v, want only pod 0's cgroup %s", atts, p0.CgroupDir)
	}
	if !recs["sb0"].Confirmed || recs["sb0"].Netns != p0.NetnsPath {
		t.Errorf("pod 0 record %+v", recs["sb0"])
	}

	// Idempotent: nothing changes, no error.
	if err := fx.w.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	recs2, _, atts2 := fx.state(t)
	if len(recs2) != len(recs) || len(atts2) != len(atts) {
		t.Errorf("second reconcile changed the state: %v -> %v", recs, recs2)
	}

	// A manual detach is repaired.
	if err := fx.dp.DetachID(recs["sb0"].Cgroups[0]); err != nil {
		t.Fatal(err)
	}
	if err := fx.w.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, atts := fx.state(t); len(atts) != 1 {
		t.Errorf("detached cgroup not re-attached: %v", atts)
	}

	// Pod 0 stops: not ready any more.
	fx.rt.set(func(f *fakeRuntime) {
		s := f.sandboxes["sb0"]
		s.Ready = false
		f.sandboxes["sb0"] = s
	})
	if err := fx.w.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	recs, eps, atts = fx.state(t)
	if _, ok := recs["sb0"]; ok {
		t.Error("stopped pod still recorded")
	}
	if _, ok := eps[p0.IPv4]; ok {
		t.Error("stopped pod's endpoint still registered")
	}
	if len(atts) != 0 {
		t.Errorf("stopped pod's cgroup still attached: %v", atts)
	}
}

// TestContainerTaskAttachedOnEvent: a container created in a known pod is
// attached from its /tasks/create event, without waiting for a reconcile,
// and the start-to-attach gap is recorded as negative.
func TestContainerTaskAttachedOnEvent(t *testing.T) {
	fx := newFixture(t, "wtev", "10.206.2.0/24", "fd00:206:2::/64")
	ctx := context.Background()
	fx.addPod(t, 0, nil)
	if err := fx.w.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	// A second container with its own cgroup, in pod 0's netns.
	cg := testnet.Cgroup(t, "patu-test-watcher-ev")
	cmd := fx.net.Pods[0].Command(ctx, "sleep", "300")
	cmd.SysProcAttr.CgroupFD = openDir(t, cg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitInNetns(t, cmd.Process.Pid, fx.net.Pods[0].NetnsPath)

	fx.w.handle(context.Background(), runtime.Event{Kind: runtime.ContainerCreated, ID: "ctr-new", Pid: cmd.Process.Pid, Time: time.Now()})
	_, _, atts := fx.state(t)
	found := false
	for _, p := range atts {
		found = found || p == cg
	}
	if !found {
		t.Fatalf("new container's cgroup %s not attached on its event: %v", cg, atts)
	}
	fx.w.handle(context.Background(), runtime.Event{Kind: runtime.ContainerStarted, ID: "ctr-new", Time: time.Now()})
	if g := fx.w.m.AttachGap()[ModeContainer]; g.Count == 0 || g.Max >= 0 {
		t.Errorf("attach gap %+v, want a negative gap", g)
	}

	// A replayed event for a process of no known pod attaches nothing.
	other := exec.Command("sleep", "300")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	before := len(atts)
	fx.w.handle(context.Background(), runtime.Event{Kind: runtime.ContainerCreated, ID: "ctr-stale", Pid: other.Process.Pid})
	if _, _, atts := fx.state(t); len(atts) != before {
		t.Errorf("event for an unknown process attached something: %v", atts)
	}
}

// TestReconcileFindsTheVeth: without a CNI plugin to record it, the
// watcher finds each pod's host veth and MACs itself, for the XDP path,
// and honours the XDP opt-out. It runs in the node's namespace, as the
// daemon does on a node.
func TestReconcileFindsTheVeth(t *testing.T) {
	fx := newFixture(t, "wtvf", "10.206.9.0/24", "fd00:206:9::/64")
	fx.addPod(t, 0, nil)
	fx.addPod(t, 1, map[string]string{"patu.io/xdp": "false"})
	if err := fx.net.Node.Do(func() error { return fx.w.Reconcile(context.Background()) }); err != nil {
		t.Fatal(err)
	}
	recs, _, _ := fx.state(t)
	for i, p := range fx.net.Pods {
		r := recs[fmt.Sprint("sb", i)]
		if r.HostIfindex != uint32(p.HostIfindex) || r.HostMAC.String() != p.HostMAC.String() || r.PodMAC.String() != p.PodMAC.String() {
			t.Errorf("pod %d record %+v: want host veth %d %s, pod MAC %s", i, r, p.HostIfindex, p.HostMAC, p.PodMAC)
		}
		if r.NoXDP != (i == 1) {
			t.Errorf("pod %d: NoXDP %v", i, r.NoXDP)
		}
	}
	routes, err := fx.dp.XDPRoutes()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(recs["sb0"].IPs) + len(recs["sb1"].IPs); len(routes) != n || n == 0 {
		t.Errorf("XDP routes %+v, want one per pod address (%d)", routes, n)
	}
}

// TestReplayedStartIsNoGap: containerd 2.x hands the events queued while
// nobody listened to the next subscriber. A start older than the watcher
// says nothing about how fast the watcher attaches; a fresh one does.
func TestReplayedStartIsNoGap(t *testing.T) {
	fx := newFixture(t, "wtrp", "10.206.8.0/24", "fd00:206:8::/64")
	covered := time.Now().Add(-time.Minute)
	fx.w.mu.Lock()
	fx.w.ctrs["ctr-old"] = &ctrState{sandbox: "sb", coveredAt: covered}
	fx.w.ctrs["ctr-new"] = &ctrState{sandbox: "sb", coveredAt: covered}
	fx.w.mu.Unlock()
	ctx := context.Background()
	fx.w.handle(ctx, runtime.Event{Kind: runtime.ContainerStarted, ID: "ctr-old", SandboxID: "sb", Time: fx.w.born.Add(-5 * time.Second)})
	if gaps := fx.w.m.AttachGap(); gaps[ModeContainer].Count != 0 {
		t.Fatalf("a replayed start counted as a gap: %+v", gaps)
	}
	fx.w.handle(ctx, runtime.Event{Kind: runtime.ContainerStarted, ID: "ctr-new", SandboxID: "sb", Time: time.Now()})
	if gaps := fx.w.m.AttachGap(); gaps[ModeContainer].Count != 1 {
		t.Fatalf("a fresh start was not counted: %+v", gaps)
	}
}

// fakeSource delivers its events, then ends with err.
type fakeSource struct {
	name   string
	events []runtime.Event
	err    error
	calls  int
	mu     sync.Mutex
}

func (s *fakeSource) Name() string { return s.name }

func (s *fakeSource) Watch(ctx context.Context, fn func(runtime.Event)) error {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	for _, ev := range s.events {
		fn(ev)
	}
	if s.err == nil {
		<-ctx.Done()
		return nil
	}
	return s.err
}

func (s *fakeSource) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// TestRunFallsBackAndReconnects: an unsupported source is skipped for the
// next one; a stream that ends is reconnected with backoff (not in a busy
// loop), and a failing runtime is retried.
func TestRunFallsBackAndReconnects(t *testing.T) {
	fx := newFixture(t, "wtrn", "10.206.3.0/24", "fd00:206:3::/64")
	unsupported := &fakeSource{name: "cri", err: runtime.ErrUnsupported}
	flaky := &fakeSource{name: "containerd", events: []runtime.Event{{ID: "x"}}, err: errors.New("EOF")}
	fx.w.cfg.Sources = []Source{unsupported, flaky}
	fx.rt.set(func(f *fakeRuntime) { f.fail = errors.New("runtime down") })

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	done := make(chan error)
	go func() { done <- fx.w.Run(ctx) }()
	time.Sleep(700 * time.Millisecond)
	fx.rt.set(func(f *fakeRuntime) { f.fail = nil })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Backoff from 200ms doubling: a few reconnects in 1.5s, not thousands.
	if c := flaky.Calls(); c < 2 || c > 6 {
		t.Errorf("stream reconnected %d times in 1.5s", c)
	}
	fx.rt.mu.Lock()
	calls := fx.rt.calls
	fx.rt.mu.Unlock()
	if calls < 2 || calls > 20 {
		t.Errorf("runtime listed %d times in 1.5s", calls)
	}
	var out strings.Builder
	if err := fx.w.m.Write(&out, fx.dp); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`patu_watcher_events_total{source="containerd"}`, "patu_watcher_reconcile_errors_total",
		"patu_watcher_stream_reconnects_total"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestRunPollsWhenNoSourceIsServed: with every source unsupported (CRI-O
// with pod events off answers containerd's API Unimplemented and ends the
// CRI stream at once), the watcher reconciles every Poll and asks the
// sources again each time, without counting reconnects.
func TestRunPollsWhenNoSourceIsServed(t *testing.T) {
	fx := newFixture(t, "wtpl", "10.206.7.0/24", "fd00:206:7::/64")
	ctrd := &fakeSource{name: "containerd", err: runtime.ErrUnsupported}
	cri := &fakeSource{name: "cri", err: runtime.ErrUnsupported}
	fx.w.cfg.Sources = []Source{ctrd, cri}
	fx.w.cfg.Poll = 200 * time.Millisecond

	ctx, cancel := context.WithTimeout(context.Background(), 1100*time.Millisecond)
	defer cancel()
	if err := fx.w.Run(ctx); err != nil {
		t.Fatal(err)
	}
	// 1.1s / 200ms: about 6 rounds, each asking both sources once.
	if c1, c2 := ctrd.Calls(), cri.Calls(); c1 < 4 || c1 > 7 || c2 != c1 {
		t.Errorf("sources asked %d and %d times in 1.1s with a 200ms poll", c1, c2)
	}
	fx.rt.mu.Lock()
	calls := fx.rt.calls
	fx.rt.mu.Unlock()
	if calls < 4 || calls > 8 {
		t.Errorf("runtime listed %d times in 1.1s with a 200ms poll", calls)
	}
	var out strings.Builder
	if err := fx.w.m.Write(&out, fx.dp); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "patu_watcher_stream_reconnects_total 0") {
		t.Errorf("polling counted as reconnects:\n%s", out.String())
	}
}

func openDir(t *testing.T, dir string) int {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// TestFirstContainerRegistersItsPod: a container created before any
// reconcile has seen its pod registers the pod and attaches the
// container's cgroup from the event alone.
func TestFirstContainerRegistersItsPod(t *testing.T) {
	fx := newFixture(t, "wtfc", "10.206.4.0/24", "fd00:206:4::/64")
	fx.addPod(t, 0, nil)
	pid := fx.process(t, 0)
	fx.w.handle(context.Background(), runtime.Event{Kind: runtime.ContainerCreated, ID: "ctr-first",
		SandboxID: sandboxID(0), Pid: pid, Time: time.Now()})
	recs, eps, atts := fx.state(t)
	if r, ok := recs[sandboxID(0)]; !ok || len(r.Cgroups) != 1 {
		t.Fatalf("pod not registered with the container's cgroup: %+v", recs)
	}
	if _, ok := eps[fx.net.Pods[0].IPv4]; !ok {
		t.Error("pod address not registered")
	}
	if len(atts) != 1 {
		t.Errorf("attachments %v", atts)
	}
}

// TestHostNetworkPodIsNotRegistered: a sandbox in the node's own network
// namespace reports the node's address; it must never become an endpoint.
func TestHostNetworkPodIsNotRegistered(t *testing.T) {
	fx := newFixture(t, "wthn", "10.206.5.0/24", "fd00:206:5::/64")
	host := exec.Command("sleep", "300")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Process.Kill(); host.Wait() })
	fx.rt.set(func(f *fakeRuntime) {
		f.sandboxes["hostnet"] = cri.Sandbox{ID: "hostnet", Name: "hostnet", Ready: true,
			IPs: []netip.Addr{netip.MustParseAddr("10.206.5.250")}, CreatedAt: time.Now()}
		f.infos["hostnet"] = cri.SandboxInfo{Pid: host.Process.Pid}
	})
	if err := fx.w.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if recs, eps, _ := fx.state(t); len(recs) != 0 || len(eps) != 0 {
		t.Errorf("host-network pod registered: %v %v", recs, eps)
	}
}

// TestReconcileSweepsOrphanedAttachments: an attachment of a removed
// cgroup that no record owns (a DEL racing an attach) is removed.
func TestReconcileSweepsOrphanedAttachments(t *testing.T) {
	fx := newFixture(t, "wtor", "10.206.6.0/24", "fd00:206:6::/64")
	mnt, err := cgroup.Mount2()
	if err != nil {
		t.Fatal(err)
	}
	dir := mnt + "/patu-test-watcher-orphan"
	os.Remove(dir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	if err := fx.dp.Attach(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := fx.w.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, atts := fx.state(t); len(atts) != 0 {
		t.Errorf("orphaned attachment left: %v", atts)
	}
}
