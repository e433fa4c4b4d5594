package crio

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/logtail"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/netns"
	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/cri"
)

var serverCmd = []string{"/bin/patu-testpeer", "serve", "--listen", "[::]:8080", "--mode", "sink"}

// TestCRIO runs one CRI-O lab for all subtests: CRI-O's start and image
// pull take a few seconds, and the lab's names are unique on the machine.
func TestCRIO(t *testing.T) {
	needLab(t)
	l := startLab(t)
	t.Run("client", func(t *testing.T) { testClient(t, l) })
	t.Run("hooks", func(t *testing.T) { testHooks(t, l) })
	t.Run("daemon", func(t *testing.T) { testDaemon(t, l) })
	// Last: it restarts CRI-O with its default, enable_pod_events = false.
	t.Run("no-pod-events", func(t *testing.T) { testNoPodEvents(t, l) })
}

// testClient checks Patu's CRI client (runtime/cri) against CRI-O: the
// runtime's name, the event stream, and what the verbose status says about
// a pod without a pause process.
func testClient(t *testing.T, l *lab) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := cri.Dial(ctx, sockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if name, version := c.RuntimeName(); name != "cri-o" || c.LegacyContainerd() {
		t.Fatalf("runtime %q %q: want cri-o", name, version)
	}

	var mu sync.Mutex
	var events []runtime.Event
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.WatchEvents(wctx, func(ev runtime.Event) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		})
	}()
	// CRI-O has no queue of earlier events: give the stream a moment to be
	// established so the pod's first event is not missed.
	time.Sleep(300 * time.Millisecond)

	p := l.runPod(t, ctx, "ev", nil, "sleep", "3600")
	info, err := c.SandboxInfo(ctx, p.id)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sandbox info: %+v", info)
	// No pause process (kubelet's default PID namespace per container):
	// CRI-O's info then has only "runtimeSpec", no "pid", no "config".
	if info.Pid != 0 || info.CgroupParent != "" {
		t.Errorf("sandbox without infra container: pid %d, cgroup parent %q: want 0 and \"\"", info.Pid, info.CgroupParent)
	}
	// The namespace is pinned by pinns under namespaces_dir.
	if !strings.HasPrefix(info.Netns, nsPinDir+"/netns/") {
		t.Errorf("netns %q: want a file under %s/netns", info.Netns, nsPinDir)
	}
	if want := cgroupRoot + "/ev/crio-" + p.id; info.CgroupsPath != want {
		t.Errorf("cgroupsPath %q, want %q", info.CgroupsPath, want)
	}
	pid, err := c.ContainerPid(ctx, p.ctr)
	if err != nil || pid <= 0 {
		t.Fatalf("container pid %d, %v", pid, err)
	}
	if a, b := inode(t, info.Netns), inode(t, fmt.Sprintf("/proc/%d/ns/net", pid)); a != b {
		t.Errorf("container pid %d is in netns %d, the sandbox's is %d", pid, b, a)
	}
	l.removePod(t, ctx, p)

	want := []runtime.Event{
		{Kind: runtime.SandboxStarted, ID: p.id},
		{Kind: runtime.ContainerCreated, ID: p.ctr},
		{Kind: runtime.ContainerStarted, ID: p.ctr},
		{Kind: runtime.ContainerStopped, ID: p.ctr},
		{Kind: runtime.SandboxStopped, ID: p.id},
		{Kind: runtime.ContainerDeleted, ID: p.ctr},
	}
	var got []runtime.Event
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		got = slices.Clone(events)
		mu.Unlock()
		if len(got) >= len(want) {
			break
		}
	}
	stop()
	if err := <-done; err != context.Canceled {
		t.Errorf("WatchEvents ended with %v, want context.Canceled", err)
	}
	var seq []string
	for _, ev := range got {
		seq = append(seq, fmt.Sprintf("%v %s", ev.Kind, ev.ID[:12]))
		if ev.SandboxID != p.id || ev.Source != runtime.SourceCRI {
			t.Errorf("event %+v: want sandbox %s, source cri", ev, p.id)
		}
	}
	t.Logf("events: %s", strings.Join(seq, ", "))
	for i, w := range want {
		if i >= len(got) || got[i].Kind != w.Kind || got[i].ID != w.ID {
			t.Fatalf("event %d: got %s, want %v %s (whole sequence above)", i, at(seq, i), w.Kind, w.ID[:12])
		}
	}
	// CRI-O sends no CREATED for a sandbox, and no DELETED when it is
	// removed; the watcher acts on STOPPED.
	if len(got) > len(want) {
		t.Logf("more events than expected: %s", strings.Join(seq[len(want):], ", "))
	}
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return "nothing"
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// testHooks runs Patu without a daemon: CRI-O runs `patu hook` from
// hooks.d at createRuntime and poststop of every container of a pod that
// carries hookAnnotation. With no pause process, those are the app
// containers; each is recorded under its own id, with the pod's pinned
// netns.
func testHooks(t *testing.T, l *lab) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bpf.Unload(pinDir)
	if out, err := exec.Command(bins.patu, "--bpffs", pinDir, "load").CombinedOutput(); err != nil {
		t.Fatalf("patu load: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if _, err := bpf.Unload(pinDir); err != nil {
			t.Errorf("unload: %v", err)
		}
	})
	d := &daemon{t: t} // only its data-plane helpers
	ann := map[string]string{hookAnnotation: "true"}
	t0 := time.Now()
	a := l.runPod(t, ctx, "ha", ann, serverCmd...)
	t.Logf("pod with hooks up in %v", time.Since(t0).Round(time.Millisecond))
	b := l.runPod(t, ctx, "hb", ann, serverCmd...)
	// The hook ran before the container's program: the record is there
	// as soon as StartContainer returned.
	for _, p := range []*pod{a, b} {
		rec, err := d.dp().LookupPod(p.ctr)
		if err != nil {
			t.Fatalf("pod %s: no record for container %s after start: %v\n%s", p.name, p.ctr[:12], err, l.logTail())
		}
		if rec.Source&bpf.PodFromHook == 0 || len(rec.Cgroups) != 1 || len(rec.IPs) != 1 || rec.IPs[0].String() != p.ip {
			t.Fatalf("pod %s: hook record %+v: want source hook, 1 cgroup, IP %s", p.name, rec, p.ip)
		}
	}
	waitListening(t, ctx, l, b, net.JoinHostPort(a.ip, "8080"))
	c0 := d.carried()
	// Paced as in the other suites: a writer that never pauses outruns
	// the reader on a loaded VM, and backpressure sends the rest over TCP.
	res := d.client(ctx, l, b, "--connect", net.JoinHostPort(a.ip, "8080"), "--mode", "stream", "--bytes", strconv.Itoa(32<<20))
	red := d.carried() - c0
	t.Logf("%d bytes sent, %d redirected", res.Bytes, red)
	if red < uint64(res.Bytes)*9/10 {
		t.Errorf("redirected %d bytes of %d; local path: %+v", red, res.Bytes, d.local())
	}
	// poststop runs when CRI-O deletes the container in runc.
	l.removePod(t, ctx, b)
	d.assertGone([]string{b.ctr}, []string{b.ip}, nil)
	if _, err := d.dp().LookupPod(a.ctr); err != nil {
		t.Errorf("pod ha lost its record when hb was removed: %v", err)
	}
	l.removePod(t, ctx, a)
	d.assertGone([]string{a.ctr}, []string{a.ip}, nil)
	// A failure inside Patu would not stop a container, only be counted
	// in the state directory: it must hold nothing.
	if ents, _ := os.ReadDir(hookStateDir); len(ents) > 0 {
		b, _ := os.ReadFile(filepath.Join(hookStateDir, ents[0].Name()))
		t.Errorf("patu hook left %s: %s", ents[0].Name(), b)
	}
}

// testDaemon runs the real patu daemon against CRI-O with --events auto:
// containerd's API is not there, so it must fall back to CRI events. A pod
// that ran before the daemon and one started after are registered with
// their containers' cgroups, traffic between them is redirected, an
// opted-out pod stays on TCP, and a removed pod leaves nothing behind.
func testDaemon(t *testing.T, l *lab) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a := l.runPod(t, ctx, "a", nil, serverCmd...)
	d := startDaemon(t, l.nsPath)
	b := l.runPod(t, ctx, "b", nil, serverCmd...)
	recA, recB := d.waitRegistered(a, 1), d.waitRegistered(b, 1)
	t.Logf("a: %s ips %v cgroups %v source %v", recA, recA.IPs, recA.Cgroups, recA.Source)
	t.Logf("b: %s ips %v cgroups %v source %v", recB, recB.IPs, recB.Cgroups, recB.Source)

	// The hooks.d files are there, but gated on an annotation these pods
	// lack: the records are the daemon's alone.
	for _, p := range []*pod{a, b} {
		if rec, err := d.dp().LookupPod(p.ctr); err == nil {
			t.Errorf("pod %s: a hook recorded its container: %+v", p.name, rec)
		}
	}

	logText := d.log()
	if !strings.Contains(logText, `msg="event source not served, trying the next" source=containerd`) ||
		!strings.Contains(logText, `msg="watching runtime events" source=cri`) {
		t.Errorf("daemon did not fall back from containerd to CRI events:\n%s", logtail.Lines([]byte(logText), 20))
	}
	if n := d.metric(`patu_watcher_events_total{source="cri"}`); n == 0 {
		t.Error("no CRI events counted")
	}

	t.Run("redirect", func(t *testing.T) {
		waitListening(t, ctx, l, b, net.JoinHostPort(a.ip, "8080"))
		c0 := d.carried()
		// Paced, as above.
		res := d.client(ctx, l, b, "--connect", net.JoinHostPort(a.ip, "8080"), "--mode", "stream", "--bytes", strconv.Itoa(32<<20))
		red := d.carried() - c0
		t.Logf("%d bytes sent, %d redirected", res.Bytes, red)
		if red < uint64(res.Bytes)*9/10 {
			t.Errorf("redirected %d bytes of %d; local path: %+v", red, res.Bytes, d.local())
		}
	})

	t.Run("opt-out", func(t *testing.T) {
		c := l.runPod(t, ctx, "c", map[string]string{"patu.io/redirect": "false"}, serverCmd...)
		defer l.removePod(t, ctx, c)
		rec := d.waitRegistered(c, 0)
		if !rec.NoRedirect || len(rec.Cgroups) != 0 {
			t.Fatalf("opted-out pod %+v: want NoRedirect and no cgroups", rec)
		}
		// Its record comes with the sandbox, before its server listens.
		waitListening(t, ctx, l, b, net.JoinHostPort(c.ip, "8080"))
		c0 := d.carried()
		d.client(ctx, l, b, "--connect", net.JoinHostPort(c.ip, "8080"), "--mode", "stream", "--bytes", strconv.Itoa(4<<20))
		if red := d.carried() - c0; red != 0 {
			t.Errorf("%d bytes to an opted-out pod were redirected", red)
		}
	})

	t.Run("remove", func(t *testing.T) {
		t0 := time.Now()
		l.removePod(t, ctx, b)
		d.assertGone([]string{b.id}, []string{b.ip}, recB.Cgroups)
		t.Logf("pod b gone %v after its removal began", time.Since(t0).Round(time.Millisecond))
		// a is untouched.
		if rec, err := d.dp().LookupPod(a.id); err != nil || len(rec.Cgroups) != 1 {
			t.Errorf("pod a after b's removal: %+v, %v", rec, err)
		}
	})
}

// testNoPodEvents runs the daemon on a CRI-O with its default
// enable_pod_events = false: the CRI stream ends at once, cleanly, which
// the daemon must take as "no events here" and poll, not as a stream
// to reconnect with growing backoff.
func testNoPodEvents(t *testing.T, l *lab) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := l.restartCRIO(ctx, false); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, l.nsPath, "--poll", "1s")
	time.Sleep(1500 * time.Millisecond) // a few polls before the pod
	t0 := time.Now()
	e := l.runPod(t, ctx, "e", nil, serverCmd...)
	rec := d.waitRegistered(e, 1)
	t.Logf("pod e registered %v after RunPodSandbox began, by polling", time.Since(t0).Round(time.Millisecond))
	if !strings.Contains(d.log(), `msg="the runtime serves no event source`) || !strings.Contains(d.log(), "enable_pod_events") {
		t.Errorf("daemon log does not say it polls, and why:\n%s", logtail.Lines([]byte(d.log()), 20))
	}
	if n := d.metric("patu_watcher_stream_reconnects_total"); n != 0 {
		t.Errorf("%v stream reconnects counted while polling", n)
	}
	l.removePod(t, ctx, e)
	d.assertGone([]string{e.id}, []string{e.ip}, rec.Cgroups)
}

// daemon is a running patu daemon with its own pin directory.
type daemon struct {
	t       *testing.T
	nsPath  string // the node's network namespace, where it runs
	cmd     *exec.Cmd
	logPath string
	metrics string
	exited  chan struct{}
}

func startDaemon(t *testing.T, nsPath string, flags ...string) *daemon {
	t.Helper()
	bpf.Unload(pinDir)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, nsPath: nsPath, logPath: filepath.Join(dir, "daemon.log"), metrics: ln.Addr().String(), exited: make(chan struct{})}
	ln.Close()
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ready := filepath.Join(dir, "ready")
	d.cmd = exec.Command(bins.patu, "--bpffs", pinDir, "daemon", "--runtime-endpoint", sockPath,
		"--events", "auto", "--metrics-addr", d.metrics, "--ready-file", ready, "--log-level", "debug", "--resync", "1m")
	d.cmd.Args = append(d.cmd.Args, flags...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// In the node's network namespace, where the pods' host veths are.
	if err := netns.Do(d.nsPath, d.cmd.Start); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() || os.Getenv("PATU_E2E_LOG") == "1" {
			t.Logf("daemon log:\n%s", logtail.Lines([]byte(d.log()), 200))
		}
		if _, err := bpf.Unload(pinDir); err != nil {
			t.Errorf("unload: %v", err)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			return d
		}
		select {
		case <-d.exited:
			t.Fatalf("daemon exited:\n%s", logtail.Lines([]byte(d.log()), 30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not ready after 30s:\n%s", logtail.Lines([]byte(d.log()), 30))
		}
	}
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

func (d *daemon) dp() *bpf.Datapath {
	d.t.Helper()
	dp, err := bpf.Open(pinDir)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { dp.Close() })
	return dp
}

// carried is what Patu's fast paths carried so far (bpf.CarriedBytes).
func (d *daemon) carried() uint64 {
	d.t.Helper()
	b, err := d.dp().CarriedBytes()
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

// local returns the local packet path's counters.
func (d *daemon) local() bpf.LocalCounters {
	d.t.Helper()
	c, err := d.dp().LocalCounters()
	if err != nil {
		d.t.Fatal(err)
	}
	return c
}

// waitRegistered waits until the pod is confirmed by the runtime, with at
// least cgroups cgroups attached.
func (d *daemon) waitRegistered(p *pod, cgroups int) bpf.Pod {
	d.t.Helper()
	dp := d.dp()
	var rec bpf.Pod
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		rec, err = dp.LookupPod(p.id)
		if err == nil && rec.Confirmed && len(rec.Cgroups) >= cgroups {
			if len(rec.IPs) != 1 || rec.IPs[0].String() != p.ip || rec.Name != p.name || rec.Namespace != podNS {
				d.t.Fatalf("pod %s registered as %+v: want %s/%s with IP %s", p.name, rec, podNS, p.name, p.ip)
			}
			return rec
		}
	}
	d.t.Fatalf("pod %s not registered with %d cgroups: %+v (%v)", p.name, cgroups, rec, err)
	return rec
}

// assertGone checks that nothing of the pods is left: record, endpoint,
// attached cgroup.
func (d *daemon) assertGone(ids, ips []string, cgroups []uint64) {
	d.t.Helper()
	dp := d.dp()
	var left []string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left = left[:0]
		for _, id := range ids {
			if _, err := dp.LookupPod(id); err == nil {
				left = append(left, "pod "+id[:12])
			}
		}
		eps, _ := dp.Endpoints()
		for _, e := range eps {
			if slices.Contains(ips, e.IP.String()) {
				left = append(left, "endpoint "+e.IP.String())
			}
		}
		for _, cg := range cgroups {
			if dp.IsAttached(cg) {
				left = append(left, fmt.Sprintf("cgroup %d", cg))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		d.t.Fatalf("left behind: %v", left)
	}
}

// client runs patu-testpeer client in a pod's container; a failed
// connection fails the test.
func (d *daemon) client(ctx context.Context, l *lab, from *pod, args ...string) peerresult.Result {
	d.t.Helper()
	argv := append([]string{"/bin/patu-testpeer", "client"}, args...)
	stdout, stderr, code, err := l.exec(ctx, from.ctr, time.Minute, argv...)
	if err != nil {
		d.t.Fatalf("exec client in %s: %v", from.name, err)
	}
	res, perr := peerresult.Parse(stdout)
	if code != 0 || perr != nil || res.Failed > 0 {
		d.t.Fatalf("client in %s: exit %d, result %+v (%v)\nstderr: %s", from.name, code, res, perr, logtail.Lines(stderr, 20))
	}
	return res
}

// waitListening waits until a connection from pod from to addr succeeds.
func waitListening(t *testing.T, ctx context.Context, l *lab, from *pod, addr string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		stdout, stderr, code, err := l.exec(ctx, from.ctr, 10*time.Second,
			"/bin/patu-testpeer", "client", "--connect", addr, "--mode", "stream", "--bytes", "1")
		if err != nil {
			t.Fatalf("exec client in %s: %v", from.name, err)
		}
		if res, perr := peerresult.Parse(stdout); code == 0 && perr == nil && res.Failed == 0 {
			return
		}
		last = logtail.Lines(append(stdout, stderr...), 5)
	}
	t.Fatalf("%s does not accept connections from %s after 15s:\n%s", addr, from.name, last)
}

// metric returns the value of the sample whose line starts with name.
func (d *daemon) metric(name string) float64 {
	d.t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netns.Dial(ctx, d.nsPath, network, addr)
	}}}
	resp, err := client.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}
