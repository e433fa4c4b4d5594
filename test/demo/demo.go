package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/gotool"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/rtlab"
)

// config is what one demo run uses. Every name is the demo's own, so it can
// run beside tests, benchmarks and a real Patu; the smoke test uses others.
type config struct {
	// Prefix names the lab: network namespace patu-<prefix>, directory
	// /run/patu-rtlab/<prefix>, cgroups under /patu-rtlab-<prefix>, and
	// the demo's work directory $TMPDIR/patu-<prefix>.
	Prefix string
	// Subnet is the pods' IPv4 subnet.
	Subnet netip.Prefix
	// PinDir is Patu's bpffs directory, never the default /sys/fs/bpf/patu.
	PinDir string
	// Flavor is the containerd to run (rtlab.Flavor16 or rtlab.Flavor2).
	Flavor string
	// Quick makes the transfer smaller and the sockperf runs 1 s long.
	Quick bool
}

func defaultConfig() config {
	return config{
		Prefix: "demo",
		Subnet: netip.MustParsePrefix("10.209.1.0/24"),
		PinDir: "/sys/fs/bpf/patu-demo",
		Flavor: rtlab.Flavor16,
	}
}

// Ports inside the pods.
const (
	echoPort     = 7100  // patu-testpeer serve in the server pod
	sockperfPort = 11111 // sockperf server, one more per run
)

// rrSizes are the request/response message sizes compared.
var rrSizes = []int{64, 1024}

// demo is the state of one run; cleanup removes what it holds.
type demo struct {
	cfg  config
	w    io.Writer
	tmp  string   // work directory: binaries, pod configs, daemon log
	lock *os.File // flock on tmp: one demo per prefix at a time
	bins struct{ patu, cni, peer string }

	lab            *rtlab.Lab
	daemon         *daemon
	server, client *pod
	step           int
	port           int // last sockperf port used
}

// errInterrupted is what run returns when its context ends (Ctrl-C) and
// the clean-up worked.
var errInterrupted = errors.New("interrupted")

// run runs the demo and removes everything it created before it returns,
// whatever happened, including a cancelled ctx (Ctrl-C).
func run(ctx context.Context, cfg config, w io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (containerd, network namespaces, cgroups, BPF): run sudo make demo")
	}
	d := &demo{cfg: cfg, w: w, port: sockperfPort - 1}
	t0 := time.Now()
	title := "Patu demo: two pods on containerd, over the bridge and with Patu"
	d.printf("%s\n%s\n", title, strings.Repeat("=", len(title)))
	d.printf("Everything runs in a private containerd (own directory and network namespace) with a\n"+
		"Patu of its own (pins in %s); all of it is removed at the end, also on Ctrl-C.\n", cfg.PinDir)
	defer func() {
		switch {
		case d.lock == nil:
			// Nothing was created: no clean-up, nothing to say.
		case ctx.Err() != nil:
			// Whatever step was running failed because of it; that
			// failure says nothing more.
			d.printf("\nInterrupted: cleaning up.\n")
			err = errInterrupted
		case err != nil:
			if d.daemon != nil && d.daemon.running() && !strings.Contains(err.Error(), "patu daemon log") {
				d.printf("%s\n", d.daemon.logTail())
			}
			d.printf("\nFailed: cleaning up.\n")
		}
		if cerr := d.cleanup(err == nil); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if err == nil {
			d.printf("\nDone in %.0f s.\n", time.Since(t0).Seconds())
		}
	}()
	if err := d.prepare(ctx); err != nil {
		return err
	}
	if err := d.startRuntime(ctx); err != nil {
		return err
	}
	if err := d.startPatu(ctx); err != nil {
		return err
	}
	if err := d.startPods(ctx); err != nil {
		return err
	}
	if err := d.showRegistered(ctx); err != nil {
		return err
	}
	dp, err := bpf.Open(cfg.PinDir)
	if err != nil {
		return err
	}
	defer dp.Close()

	d.section("A verified transfer with Patu: pod client streams %d MiB to the echo server in pod server,\n"+
		"which sends it back; patu-testpeer checks every byte. It writes 64 KiB chunks with short\n"+
		"random pauses, as an application producing data does: a writer that never pauses outruns\n"+
		"its reader, and Patu then leaves the excess to TCP's flow control (its counters show why).",
		d.transferBytes()>>20)
	patuXfer, err := d.transfer(ctx, dp)
	if err != nil {
		return err
	}
	if err := patuXfer.check(); err != nil {
		return err
	}

	d.section("Request/response with Patu: sockperf ping-pong over TCP, %s messages, %d s each.",
		sizeList(), d.rrSeconds())
	d.printf("   sockperf is not in the pods' image, so it runs as a host process placed into the pod's\n" +
		"   network namespace and its container's cgroup, where `crictl exec` would put it:\n")
	patuRR, err := d.rrAll(ctx, dp, true)
	if err != nil {
		return err
	}
	dp.Close()

	d.section("Stop the daemon and unload Patu. The pods keep running, and new connections take the\n" +
		"bridge path again: pod → veth → bridge → veth → pod. The same transfer and runs:")
	d.printf("   $ kill -TERM %d   (patu daemon)\n", d.daemon.cmd.Process.Pid)
	if err := d.daemon.stop(); err != nil {
		return fmt.Errorf("stop patu daemon: %w%s", err, d.daemon.logTail())
	}
	if err := d.patu(ctx, "unload"); err != nil {
		return err
	}
	bridgeXfer, err := d.transfer(ctx, nil)
	if err != nil {
		return err
	}
	d.printf("   The bridge handed the pods %s packets for this transfer; with Patu %s.\n",
		count(bridgeXfer.vethPkts), count(patuXfer.vethPkts))
	bridgeRR, err := d.rrAll(ctx, nil, false)
	if err != nil {
		return err
	}

	d.section("Bridge vs Patu, the same pods in the same run:")
	writeTable(w, bridgeRR, patuRR)
	d.printf("\n   %s\n", d.tableNotes())
	for _, r := range patuRR {
		if !r.redirected() {
			return fmt.Errorf("the %s run with Patu did not take its fast path (%d bytes carried, %d bridge packets)",
				sizeName(r.size), r.redirectBytes, r.vethPkts)
		}
	}
	return nil
}

// prepare takes the demo's lock, removes what a crashed earlier demo left,
// and builds the binaries.
func (d *demo) prepare(ctx context.Context) error {
	d.section("Prepare: build patu (CLI and daemon), patu-cni (the CNI plugin) and patu-testpeer\n" +
		"(a traffic tool that verifies every byte).")
	if _, err := exec.LookPath("sockperf"); err != nil {
		return errors.New("sockperf not found: run hack/deps.sh (as root)")
	}
	d.tmp = filepath.Join(os.TempDir(), "patu-"+d.cfg.Prefix)
	if err := os.MkdirAll(d.tmp, 0o700); err != nil {
		return fmt.Errorf("create work dir: %w", err)
	}
	lock, err := os.Open(d.tmp)
	if err != nil {
		return fmt.Errorf("open work dir: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		d.tmp = "" // not ours to remove
		return fmt.Errorf("another demo with prefix %q is running (%s is locked)", d.cfg.Prefix, filepath.Join(os.TempDir(), "patu-"+d.cfg.Prefix))
	}
	d.lock = lock

	// A crashed run (SIGKILL, power loss) leaves its lab, pins and files;
	// nothing else can be using them while we hold the lock.
	stale := exists(filepath.Join(rtlab.BaseDir, d.cfg.Prefix)) || exists("/run/netns/patu-"+d.cfg.Prefix) || exists(d.cfg.PinDir)
	if err := rtlab.Sweep(d.cfg.Prefix); err != nil {
		return fmt.Errorf("remove an earlier demo's leftovers: %w", err)
	}
	if _, err := bpf.Unload(d.cfg.PinDir); err != nil {
		return fmt.Errorf("remove an earlier demo's pins: %w", err)
	}
	entries, _ := os.ReadDir(d.tmp)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(d.tmp, e.Name()))
	}
	if stale {
		d.printf("   Removed what an earlier, interrupted demo left behind.\n")
	}

	t := time.Now()
	d.bins.patu, d.bins.cni, d.bins.peer = filepath.Join(d.tmp, "patu"), filepath.Join(d.tmp, "patu-cni"), filepath.Join(d.tmp, "patu-testpeer")
	for out, pkg := range map[string]string{d.bins.patu: "cmd/patu", d.bins.cni: "cmd/patu-cni", d.bins.peer: "test/peer"} {
		// Static: patu-testpeer goes into the pods' busybox image.
		cmd := exec.CommandContext(ctx, gotool.Path(), "build", "-trimpath", "-o", out, "github.com/patu-dev/patu/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w: %s", pkg, err, strings.TrimSpace(string(b)))
		}
	}
	d.printf("   Built in %.1f s into %s.\n", time.Since(t).Seconds(), d.tmp)
	return nil
}

// startRuntime starts the lab: containerd with CRI in its own network
// namespace, the CNI chain bridge → patu, the pause and workload images.
func (d *demo) startRuntime(ctx context.Context) error {
	d.section("Start containerd %s with CRI, in its own network namespace patu-%s. Its CNI chain is\n"+
		"bridge (a veth per pod on bridge %sbr0, %s) followed by Patu's plugin, patu-cni.",
		d.cfg.Flavor, d.cfg.Prefix, d.cfg.Prefix, d.cfg.Subnet)
	t := time.Now()
	lab, err := rtlab.Start(ctx, rtlab.Config{
		Flavor: d.cfg.Flavor,
		Prefix: d.cfg.Prefix,
		Subnet: d.cfg.Subnet,
		Chain: []rtlab.Plugin{{Type: "patu", Binary: d.bins.cni,
			Conf: map[string]any{"bpffs": d.cfg.PinDir, "logFile": filepath.Join(d.tmp, "patu-cni.log")}}},
		ImageFiles: map[string]string{"/bin/patu-testpeer": d.bins.peer},
	})
	if err != nil {
		return err
	}
	d.lab = lab
	d.printf("   Ready in %.1f s: CRI on %s,\n   images %s and %s (busybox + patu-testpeer) imported.\n",
		time.Since(t).Seconds(), lab.Socket(), rtlab.PauseImage, rtlab.WorkloadImage)
	return nil
}

// startPatu loads Patu and starts its daemon on the lab's CRI socket.
func (d *demo) startPatu(ctx context.Context) error {
	d.section("Load Patu and start its daemon, as a node's install does. The daemon follows the\n" +
		"runtime's pods over CRI and attaches Patu to their cgroups.")
	if err := d.patu(ctx, "load"); err != nil {
		return err
	}
	metrics, err := freeAddr()
	if err != nil {
		return err
	}
	args := []string{"--bpffs", d.cfg.PinDir, "daemon", "--runtime-endpoint", d.lab.Socket(),
		"--metrics-addr", metrics, "--ready-file", filepath.Join(d.tmp, "daemon.ready")}
	d.printf("   $ patu %s &\n", strings.Join(args, " "))
	dm, err := startDaemon(ctx, d.bins.patu, args, filepath.Join(d.tmp, "daemon.log"))
	if err != nil {
		return err
	}
	d.daemon = dm
	d.printf("   The daemon is up (pid %d, metrics on http://%s/metrics, log %s).\n", dm.cmd.Process.Pid, metrics, dm.log)
	return nil
}

// showRegistered waits until the daemon has confirmed both pods and
// attached their cgroups, then prints `patu status`.
func (d *demo) showRegistered(ctx context.Context) error {
	d.section("Patu registered both pods: its CNI plugin recorded each at ADD, and the daemon confirmed\n" +
		"them with the runtime and attached their pod cgroups.")
	for _, p := range []*pod{d.server, d.client} {
		if err := waitRegistered(ctx, d.cfg.PinDir, p.id); err != nil {
			return fmt.Errorf("pod %s: %w%s", p.name, err, d.daemon.logTail())
		}
	}
	out, err := exec.CommandContext(ctx, d.bins.patu, "--bpffs", d.cfg.PinDir, "status").CombinedOutput()
	if err != nil {
		return fmt.Errorf("patu status: %w: %s", err, out)
	}
	d.printf("   $ patu --bpffs %s status\n", d.cfg.PinDir)
	// The counters at the end are all zero yet; each step below shows
	// what it moved.
	status, _, _ := strings.Cut(string(out), "\npacket path:")
	d.printf("%s\n   (its counters are shown per step below)\n", indent(strings.TrimRight(status, "\n"), "   "))
	return nil
}

// transferResult is one verified transfer and what it moved where.
type transferResult struct {
	peerresult.Result
	vethPkts uint64
	delta    *counterDelta // nil without Patu
}

// check fails a transfer with Patu that was mostly not redirected.
func (r transferResult) check() error {
	if r.delta == nil {
		return nil
	}
	red, tcp := r.delta.carried(), r.delta.tcpBytes()
	if red == 0 || float64(red) < 0.5*float64(red+tcp) {
		return fmt.Errorf("the transfer with Patu did not take its fast path: %d bytes carried, %d over TCP", red, tcp)
	}
	return nil
}

// transfer runs the verified stream from client to server with crictl
// exec, and reports it with the veth packets it cost, and with Patu's
// counters when dp is not nil.
func (d *demo) transfer(ctx context.Context, dp *bpf.Datapath) (transferResult, error) {
	var r transferResult
	var c0 snapshot
	var err error
	if dp != nil {
		if c0, err = readSnapshot(dp); err != nil {
			return r, err
		}
	}
	v0, err := d.vethPackets()
	if err != nil {
		return r, err
	}
	args := []string{"exec", d.client.ctr, "/bin/patu-testpeer", "client",
		"--connect", netip.AddrPortFrom(d.server.ip, echoPort).String(),
		"--mode", "stream", "--bytes", fmt.Sprint(d.transferBytes()), "--seed", "1"}
	d.printf("   $ crictl exec %s %s\n", short(d.client.ctr), strings.Join(args[2:], " "))
	out, err := d.lab.Crictl(ctx, args...)
	if err != nil {
		return r, fmt.Errorf("transfer: %w", err)
	}
	if r.Result, err = peerresult.Parse(out); err != nil {
		return r, fmt.Errorf("transfer: %w", err)
	}
	if r.Failed > 0 || r.OK != r.Conns {
		return r, fmt.Errorf("transfer: %d of %d connections failed: %v", r.Failed, r.Conns, r.Errors)
	}
	v1, err := d.vethPackets()
	if err != nil {
		return r, err
	}
	r.vethPkts = v1 - v0
	d.printf("   %d of %d connection intact: %.0f MiB sent, echoed and verified in %.2f s.\n",
		r.OK, r.Conns, float64(r.Bytes)/(1<<20), time.Duration(r.DurationNS).Seconds())
	if dp == nil {
		return r, nil
	}
	c1, err := readSnapshot(dp)
	if err != nil {
		return r, err
	}
	r.delta = diffCounters(c0, c1)
	// A bulk direction reaches its pod by the pod's veth, handed there by
	// the packet path: not the bridge's.
	r.vethPkts -= min(r.vethPkts, r.delta.BacklogPackets)
	d.printf("   What Patu counted for it (the difference in `patu status` before and after):\n")
	d.printf("%s", indent(r.delta.String(), "     "))
	d.printf("   The bridge handed the pods %s packets through their veths.\n", count(r.vethPkts))
	return r, nil
}

// cleanup removes everything the run created, in the order that frees
// each thing's users first: the daemon, the pods (through CRI, so CNI DEL
// runs), containerd and the rest of the lab, the pins, the work directory.
// On success it shows the user's crictl commands for the pods.
func (d *demo) cleanup(ok bool) error {
	if d.lock == nil {
		return nil // nothing created; the names may be another demo's
	}
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if ok {
		d.section("Clean up: remove the pods, then containerd, its network namespace, Patu's pins and\n" +
			"the pods' cgroups.")
	}
	if d.daemon != nil {
		if err := d.daemon.stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop patu daemon: %w", err))
		}
	}
	if d.lab != nil {
		if ok {
			for _, p := range []*pod{d.client, d.server} {
				if p == nil {
					continue
				}
				for _, verb := range []string{"stopp", "rmp"} {
					d.printf("   $ crictl %s %s\n", verb, short(p.id))
					if _, err := d.lab.Crictl(ctx, verb, p.id); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		// Close also removes pods a failed or interrupted run left.
		if err := d.lab.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unloadAll(ctx, d.cfg.PinDir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(d.tmp); err != nil {
		errs = append(errs, fmt.Errorf("remove work dir: %w", err))
	}
	d.lock.Close()
	left := d.leftovers()
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("left behind: %s", strings.Join(left, ", ")))
	}
	if err := errors.Join(errs...); err != nil {
		d.printf("   Clean-up failed: %v\n", err)
		return err
	}
	d.printf("   Cleaned up: no pods, no containerd, and no network namespace patu-%s, %s,\n"+
		"   %s or cgroup /patu-rtlab-%s are left.\n", d.cfg.Prefix, filepath.Join(rtlab.BaseDir, d.cfg.Prefix), d.cfg.PinDir, d.cfg.Prefix)
	return nil
}

// unloadAll unloads Patu from pinDir. Sockets still in its socket map
// keep part of it pinned until they close, which, with the pods gone,
// takes a moment at most.
func unloadAll(ctx context.Context, pinDir string) error {
	for {
		res, err := bpf.Unload(pinDir)
		if err != nil {
			return fmt.Errorf("unload patu: %w", err)
		}
		if res.LiveSockets == 0 && res.LiveFlows == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unload patu: %d sockets still in its socket map, %d flows on its packet path", res.LiveSockets, res.LiveFlows)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// leftovers lists what of the demo still exists after cleanup.
func (d *demo) leftovers() []string {
	var left []string
	for _, p := range []string{
		filepath.Join(rtlab.BaseDir, d.cfg.Prefix),
		"/run/netns/patu-" + d.cfg.Prefix,
		d.cfg.PinDir,
	} {
		if exists(p) {
			left = append(left, p)
		}
	}
	if exists(d.tmp) {
		left = append(left, d.tmp)
	}
	if mnt, err := cgroup.Mount2(); err == nil && exists(filepath.Join(mnt, "patu-rtlab-"+d.cfg.Prefix)) {
		left = append(left, filepath.Join(mnt, "patu-rtlab-"+d.cfg.Prefix))
	}
	return left
}

// patu runs the patu CLI on the demo's pins and shows the command and its
// output.
func (d *demo) patu(ctx context.Context, args ...string) error {
	all := append([]string{"--bpffs", d.cfg.PinDir}, args...)
	d.printf("   $ patu %s\n", strings.Join(all, " "))
	out, err := exec.CommandContext(ctx, d.bins.patu, all...).CombinedOutput()
	if s := strings.TrimSpace(string(out)); s != "" {
		d.printf("%s\n", indent(s, "   "))
	}
	if err != nil {
		return fmt.Errorf("patu %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (d *demo) transferBytes() int64 {
	if d.cfg.Quick {
		return 16 << 20
	}
	return 64 << 20
}

func (d *demo) rrSeconds() int {
	if d.cfg.Quick {
		return 1
	}
	return 2
}

// tableNotes says how the numbers were taken, and what on this machine
// may have disturbed them.
func (d *demo) tableNotes() string {
	notes := fmt.Sprintf("sockperf ping-pong keeps one request in flight: round trips/s (transactions/s) is\n"+
		"   about 1 / mean latency. Each run lasted %d s, of which sockperf leaves out its warm-up;\n"+
		"   bridge and Patu ran one after the other on this machine's %d CPUs", d.rrSeconds(), runtime.NumCPU())
	if b, err := os.ReadFile("/proc/loadavg"); err == nil && len(strings.Fields(string(b))) > 0 {
		notes += fmt.Sprintf("\n   (load average %s: other work on this machine adds noise to both)", strings.Fields(string(b))[0])
	}
	notes += "."
	if others := otherPatus(d.cfg.PinDir); len(others) > 0 {
		notes += fmt.Sprintf("\n   Other Patu instances are loaded on this machine (%s):\n"+
			"   their receive-proof tracepoint runs on every recvmsg, on both paths.", strings.Join(others, ", "))
	}
	return notes
}

// otherPatus lists Patu pin directories other than own.
func otherPatus(own string) []string {
	matches, _ := filepath.Glob("/sys/fs/bpf/patu*")
	var out []string
	for _, m := range matches {
		if m != own {
			out = append(out, m)
		}
	}
	return out
}

// section starts the next numbered step.
func (d *demo) section(format string, args ...any) {
	d.step++
	// Continuation lines line up with the step's output, below.
	text := fmt.Sprintf(format, args...)
	d.printf("\n%d. %s\n", d.step, strings.ReplaceAll(text, "\n", "\n   "))
}

func (d *demo) printf(format string, args ...any) {
	fmt.Fprintf(d.w, format, args...)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func indent(s, prefix string) string {
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if l != "" && l != "\n" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "")
}

// short is the 13-character form of a container or sandbox id, as crictl
// prints it; crictl accepts any unique prefix.
func short(id string) string {
	if len(id) > 13 {
		return id[:13]
	}
	return id
}
