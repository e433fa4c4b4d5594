package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/netns"
)

// The footprint section measures what Patu costs a node besides the data
// path: the binaries' size, the daemon's memory, CPU and wake-ups, and the
// time the CNI plugin adds to a pod's start. Its labs, pins and namespaces
// have their own names, so it can run next to the other suites.
const (
	fpFlavor     = rtlab.Flavor16
	fpPrefix     = "bnfp" // lab with the patu plugin chained and the daemon running
	fpBasePrefix = "bnf0" // lab without Patu, the baseline of the pod start time
	fpPinDir     = "/sys/fs/bpf/patu-bench-fp"
	fpNetnsNode  = "bnfc-node" // CNI ADD measurement: the node side
	fpNetnsPod   = "bnfc-pod"  // and the pods: one for ADD/DEL through libcni,
	fpNetnsExec  = "bnfc-exec" // one whose interface stays for patu-cni run alone
	fpBridge     = "fpbr0"
	fpNetwork    = "patu-bench-fp"
	// fpNamespace is the pods' Kubernetes namespace.
	fpNamespace = "bench"
)

var (
	fpSubnet     = netip.MustParsePrefix("10.210.1.0/24")
	fpBaseSubnet = netip.MustParsePrefix("10.210.2.0/24")
	fpCNISubnet  = netip.MustParsePrefix("10.210.3.0/24")
)

// fpSettings are the sizes of the footprint measurements.
type fpSettings struct {
	Settle     time.Duration // ready until the idle RSS is read
	Idle       time.Duration // idle CPU and wake-up window
	ChurnPods  int
	ChurnWidth int // pods created or removed at once
	Starts     int // timed pod starts per lab
	CNIPairs   int // timed ADD/DEL per conflist
	// AfterMin and AfterMax bound the wait for the daemon to give memory
	// back after churn: it does so 5 s after its last reconcile.
	AfterMin, AfterMax time.Duration
	// Against is a git revision whose daemon is measured too, after this
	// build's, on the same lab: what a change cost, side by side.
	Against string
}

// footprintSettings fills in the defaults of the flags left at 0: the full
// section takes about 3 minutes, the -quick one under 1.
func footprintSettings(cfg config) fpSettings {
	s := fpSettings{Settle: 10 * time.Second, Idle: 30 * time.Second, ChurnPods: 50, ChurnWidth: 5, Starts: 20, CNIPairs: 50,
		AfterMin: 7 * time.Second, AfterMax: 20 * time.Second}
	if cfg.quick {
		s.Settle, s.Idle, s.ChurnPods, s.Starts, s.CNIPairs = 6*time.Second, 10*time.Second, 10, 5, 12
	}
	if cfg.fpIdle > 0 {
		s.Idle = cfg.fpIdle
	}
	if cfg.fpPods > 0 {
		s.ChurnPods = cfg.fpPods
	}
	if cfg.fpStarts > 0 {
		s.Starts = cfg.fpStarts
	}
	if cfg.fpCNI > 0 {
		s.CNIPairs = cfg.fpCNI
	}
	s.Against = cfg.fpAgainst
	return s
}

// footprint is one run of the section.
type footprint struct {
	log  *slog.Logger
	set  fpSettings
	tmp  string
	bins struct{ patu, cni, empty, noop, against string }
	lab  *rtlab.Lab // with Patu
	base *rtlab.Lab // without
	d    *daemonProc
	rep  *footprintReport
	// netnsMade lists the namespaces to delete on the way out.
	netnsMade []string
}

// runFootprint runs the footprint section and returns its report, partial
// when it fails (with the error in it). Everything it creates is removed
// before it returns, also when ctx is cancelled.
func runFootprint(ctx context.Context, log *slog.Logger, set fpSettings) (*footprintReport, error) {
	f := &footprint{log: log.With("section", "footprint"), set: set}
	f.rep = &footprintReport{Started: time.Now(), Settings: set.report()}
	err := f.run(ctx)
	if cerr := f.cleanup(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
	}
	f.rep.Finished = time.Now()
	f.rep.Checks = f.rep.checks()
	if err != nil {
		f.rep.Error = err.Error()
	}
	return f.rep, err
}

func (f *footprint) run(ctx context.Context) error {
	if err := f.sweep(); err != nil {
		return err
	}
	var err error
	if f.tmp, err = os.MkdirTemp("", fpTempPattern); err != nil {
		return err
	}
	step := f.timed("build binaries")
	if err := f.build(ctx); err != nil {
		return err
	}
	step()
	step = f.timed("start labs")
	if err := f.startLabs(ctx); err != nil {
		return err
	}
	step()
	f.rep.Containerd = toolVersion("/usr/bin/containerd", "--version")

	builds := []*daemonRun{{Build: "this build", Binary: f.rep.Binaries[0]}}
	if f.bins.against != "" {
		fi, err := os.Stat(f.bins.against)
		if err != nil {
			return err
		}
		builds = append(builds, &daemonRun{Build: f.set.Against, Binary: binaryInfo{Name: "patu", Bytes: fi.Size()}})
	}
	for i, run := range builds {
		bin := f.bins.patu
		if i > 0 {
			bin = f.bins.against
			// The older daemon loads its own programs over the pins.
			if _, err := bpf.Unload(fpPinDir); err != nil {
				return fmt.Errorf("unload before %s: %w", run.Build, err)
			}
		}
		f.rep.Daemons = append(f.rep.Daemons, run)
		if err := f.startDaemon(ctx, bin, run); err != nil {
			return err
		}
		if err := f.measureIdle(ctx, run); err != nil {
			return err
		}
		if i == 0 {
			// Pod starts before the churn: containerd cleans up after
			// removed pods in the background for a while, which would
			// slow only the Patu lab's starts.
			step = f.timed("pod start")
			if err := f.podStarts(ctx); err != nil {
				return err
			}
			step()
		}
		step = f.timed("churn, " + run.Build)
		if err := f.churn(ctx, run); err != nil {
			return err
		}
		step()
		// The daemon is done; the pins stay, so that the CNI plugin
		// registers pods as on a node where Patu runs, without the
		// daemon reacting.
		if err := f.d.stop(); err != nil {
			return fmt.Errorf("stop daemon: %w", err)
		}
	}
	if len(builds) > 1 {
		// Back to this build's programs for the CNI measurements.
		if _, err := bpf.Unload(fpPinDir); err != nil {
			return err
		}
		if out, err := exec.CommandContext(ctx, f.bins.patu, "--bpffs", fpPinDir, "load").CombinedOutput(); err != nil {
			return fmt.Errorf("patu load: %w: %s", err, out)
		}
	}
	step = f.timed("CNI ADD")
	if err := f.cniBench(ctx); err != nil {
		return err
	}
	step()
	return nil
}

// timed logs how long a step took when the returned func is called.
func (f *footprint) timed(what string) func() {
	t0 := time.Now()
	f.log.Info(what)
	return func() { f.log.Info(what+" done", "took", time.Since(t0).Round(100*time.Millisecond)) }
}

// sweep removes what a killed run left: its daemon, its labs, its pins
// and namespaces.
func (f *footprint) sweep() error {
	if err := killStrayDaemons(fpPinDir); err != nil {
		return err
	}
	for _, p := range []string{fpPrefix, fpBasePrefix} {
		if err := rtlab.Sweep(p); err != nil {
			return err
		}
	}
	if _, err := bpf.Unload(fpPinDir); err != nil {
		return fmt.Errorf("remove stale pins in %s: %w", fpPinDir, err)
	}
	for _, n := range []string{fpNetnsExec, fpNetnsPod, fpNetnsNode} {
		if err := netns.Delete(n); err != nil {
			return err
		}
	}
	// The binaries and CNI state of a killed run. Two footprint runs at
	// once cannot work anyway: the sweeps above stop each other's labs.
	old, _ := filepath.Glob(filepath.Join(os.TempDir(), fpTempPattern))
	for _, d := range old {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("remove %s of an earlier run: %w", d, err)
		}
	}
	return nil
}

// fpTempPattern names the section's temporary directory.
const fpTempPattern = "patu-bench-fp-*"

// cleanup removes everything run created; safe after any failure.
func (f *footprint) cleanup() error {
	var errs []error
	if f.d != nil {
		if err := f.d.stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop daemon: %w", err))
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, l := range []*rtlab.Lab{f.lab, f.base} {
		if l == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Close(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// After the labs: their pods' cgroups held the attachments.
	if _, err := bpf.Unload(fpPinDir); err != nil {
		errs = append(errs, fmt.Errorf("unload %s: %w", fpPinDir, err))
	}
	// Deleting the namespaces removes the bridge and veths in them.
	for i := len(f.netnsMade) - 1; i >= 0; i-- {
		if err := netns.Delete(f.netnsMade[i]); err != nil {
			errs = append(errs, err)
		}
	}
	f.netnsMade = nil
	if f.tmp != "" {
		if err := os.RemoveAll(f.tmp); err != nil {
			errs = append(errs, err)
		}
		f.tmp = ""
	}
	return errors.Join(errs...)
}

// build builds patu and patu-cni as the Makefile does, and two small Go
// programs with the same flags: an empty one, the floor of any Go
// binary's start, and a chained CNI plugin that does nothing but print its
// prevResult, the floor of a chained plugin written in Go.
func (f *footprint) build(ctx context.Context) error {
	goBin, err := fpFindGo()
	if err != nil {
		return err
	}
	f.bins.patu, f.bins.cni = filepath.Join(f.tmp, "patu"), filepath.Join(f.tmp, "patu-cni")
	f.bins.empty, f.bins.noop = filepath.Join(f.tmp, "empty"), filepath.Join(f.tmp, "noop-cni")
	type build struct{ out, pkg, dir string }
	builds := []build{
		{f.bins.patu, "github.com/patu-dev/patu/cmd/patu", ""},
		{f.bins.cni, "github.com/patu-dev/patu/cmd/patu-cni", ""},
	}
	for _, p := range []struct{ out, src string }{{f.bins.empty, emptyProgram}, {f.bins.noop, noopPlugin}} {
		dir := p.out + "-src"
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module "+filepath.Base(p.out)+"\n\ngo 1.22\n"), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(p.src), 0o644); err != nil {
			return err
		}
		builds = append(builds, build{p.out, ".", dir})
	}
	for _, b := range builds {
		cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s", "-o", b.out, b.pkg)
		cmd.Dir = b.dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if b.dir != "" {
			cmd.Env = append(cmd.Env, "GOWORK=off", "GOTOOLCHAIN=local")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return fmt.Errorf("build %s: %w: %s", filepath.Base(b.out), err, tail(string(out), 1000))
		}
	}
	if f.set.Against != "" {
		if err := f.buildAgainst(ctx, goBin); err != nil {
			return err
		}
	}
	for _, b := range []struct{ name, path string }{{"patu", f.bins.patu}, {"patu-cni", f.bins.cni},
		{binEmpty, f.bins.empty}, {binNoop, f.bins.noop}} {
		fi, err := os.Stat(b.path)
		if err != nil {
			return err
		}
		f.rep.Binaries = append(f.rep.Binaries, binaryInfo{Name: b.name, Bytes: fi.Size()})
	}
	return nil
}

// buildAgainst builds the patu command of the revision f.set.Against from
// a copy of this repository's tree at that revision, with the same flags.
func (f *footprint) buildAgainst(ctx context.Context, goBin string) error {
	top, err := exec.CommandContext(ctx, "git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return fmt.Errorf("-footprint-against needs the git checkout the benchmark runs in: %w", err)
	}
	src := filepath.Join(f.tmp, "against-src")
	if err := os.Mkdir(src, 0o755); err != nil {
		return err
	}
	archive := exec.CommandContext(ctx, "git", "-C", strings.TrimSpace(string(top)), "archive", f.set.Against)
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return err
	}
	untar.Stdin = pipe
	var archErr strings.Builder
	archive.Stderr = &archErr
	if err := untar.Start(); err != nil {
		return err
	}
	if err := archive.Run(); err != nil {
		untar.Wait()
		return fmt.Errorf("git archive %s: %w: %s", f.set.Against, err, archErr.String())
	}
	if err := untar.Wait(); err != nil {
		return fmt.Errorf("unpack %s: %w", f.set.Against, err)
	}
	f.bins.against = filepath.Join(f.tmp, "against", "patu")
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s", "-o", f.bins.against, "./cmd/patu")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build patu at %s: %w: %s", f.set.Against, err, tail(string(out), 1000))
	}
	return nil
}

// Names of the reference programs in the report.
const (
	binEmpty = "empty Go program"
	binNoop  = "no-op chained plugin"
)

const emptyProgram = `package main

func main() {}
`

// noopPlugin passes prevResult through on ADD and does nothing else.
const noopPlugin = `package main

import (
	"encoding/json"
	"os"
)

func main() {
	var conf struct {
		PrevResult json.RawMessage ` + "`json:\"prevResult\"`" + `
	}
	if err := json.NewDecoder(os.Stdin).Decode(&conf); err != nil {
		os.Exit(1)
	}
	if os.Getenv("CNI_COMMAND") == "ADD" {
		os.Stdout.Write(conf.PrevResult)
	}
}
`

// fpFindGo returns the go command: from PATH, else where Go is installed.
func fpFindGo() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	for _, p := range []string{filepath.Join(os.Getenv("GOROOT"), "bin", "go"), "/usr/local/go/bin/go"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("go command not found: the footprint builds the binaries; add /usr/local/go/bin to PATH")
}

// startLabs starts the lab with Patu's plugin chained and the baseline lab
// without it, at the same time.
func (f *footprint) startLabs(ctx context.Context) error {
	cfgs := []rtlab.Config{
		{Flavor: fpFlavor, Prefix: fpPrefix, Subnet: fpSubnet, Log: f.log,
			Chain: []rtlab.Plugin{{Type: "patu", Binary: f.bins.cni, Conf: map[string]any{"bpffs": fpPinDir}}}},
		{Flavor: fpFlavor, Prefix: fpBasePrefix, Subnet: fpBaseSubnet, Log: f.log},
	}
	labs := make([]*rtlab.Lab, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, c := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			labs[i], errs[i] = rtlab.Start(ctx, c)
		}()
	}
	wg.Wait()
	f.lab, f.base = labs[0], labs[1] // cleanup closes whichever started
	return errors.Join(errs...)
}

// daemonProc is a running patu daemon.
type daemonProc struct {
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	logPath string
}

func (d *daemonProc) pid() int { return d.cmd.Process.Pid }

func (d *daemonProc) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after 10 s. Safe to call again.
func (d *daemonProc) stop() error {
	if d.exited() {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	d.cmd.Process.Kill()
	<-d.done
	return fmt.Errorf("daemon ignored SIGTERM for 10s; killed. Log %s:\n%s", d.logPath, fpFileTail(d.logPath, 2000))
}

// startDaemon starts the patu daemon bin on the Patu lab and waits for its
// ready file. It loads Patu itself (patu load, in a child process).
func (f *footprint) startDaemon(ctx context.Context, bin string, run *daemonRun) error {
	addr, err := fpFreeAddr()
	if err != nil {
		return err
	}
	ready := filepath.Join(f.tmp, fmt.Sprintf("daemon-%d.ready", len(f.rep.Daemons)))
	d := &daemonProc{done: make(chan struct{}), logPath: filepath.Join(f.tmp, fmt.Sprintf("daemon-%d.log", len(f.rep.Daemons)))}
	logf, err := os.Create(d.logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	d.cmd = exec.Command(bin, "--bpffs", fpPinDir, "daemon", "--runtime-endpoint", f.lab.Socket(),
		"--metrics-addr", addr, "--ready-file", ready)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Dies with the benchmark, even when it is killed.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := d.cmd.Start(); err != nil {
		return fmt.Errorf("start patu daemon: %w", err)
	}
	f.d = d
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	deadline := time.After(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		select {
		case <-d.done:
			return fmt.Errorf("patu daemon exited before ready: %v; log:\n%s", d.err, fpFileTail(d.logPath, 2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("patu daemon not ready after 30s; log:\n%s", fpFileTail(d.logPath, 2000))
		case <-time.After(20 * time.Millisecond):
		}
	}
	run.ReadySec = time.Since(t0).Seconds()
	f.log.Info("daemon ready", "build", run.Build, "pid", d.pid(), "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

func fpFreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port for the daemon's metrics: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// killStrayDaemons kills patu daemons of an earlier run on pinDir, which
// Pdeathsig should already have ended. Only processes whose command line
// names pinDir and "daemon" are touched.
func killStrayDaemons(pinDir string) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		if !isDaemonOf(strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), pinDir) {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
	}
	return nil
}

// isDaemonOf reports whether argv is "patu --bpffs pinDir daemon ...".
func isDaemonOf(argv []string, pinDir string) bool {
	if len(argv) < 4 || filepath.Base(argv[0]) != "patu" {
		return false
	}
	for i := 1; i+2 < len(argv); i++ {
		if argv[i] == "--bpffs" && argv[i+1] == pinDir && argv[i+2] == "daemon" {
			return true
		}
	}
	return false
}

// fpSleep waits d or until ctx is done.
func fpSleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// measureIdle reads the daemon's memory once it has settled after start,
// then its CPU time and context switches over the idle window.
func (f *footprint) measureIdle(ctx context.Context, run *daemonRun) error {
	if err := fpSleep(ctx, f.set.Settle); err != nil {
		return err
	}
	pid := f.d.pid()
	pt, err := f.rssPoint("idle")
	if err != nil {
		return err
	}
	pt.AfterSec = f.set.Settle.Seconds()
	run.RSS = append(run.RSS, pt)
	f.log.Info("idle RSS", "build", run.Build, "rss_kib", pt.VmRSS, "anon_kib", pt.RssAnon, "file_kib", pt.RssFile,
		"binary_kib", pt.BinaryKiB, "pss_kib", pt.Pss)

	f.log.Info("idle window", "duration", f.set.Idle)
	a, err := readProc(pid)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := fpSleep(ctx, f.set.Idle); err != nil {
		return err
	}
	b, err := readProc(pid)
	if err != nil {
		return err
	}
	win := time.Since(t0).Seconds()
	u := &idleUsage{
		WindowSec: win,
		CPUTicks:  b.cpuTicks - a.cpuTicks,
		RunNs:     taskDelta(a.runNs, b.runNs),
		Switches:  taskDelta(a.switches, b.switches),
		Threads:   b.status.Threads,
	}
	u.CPUMsPerSec = float64(u.CPUTicks) * 1000 / clockTicks / win
	u.RunMsPerSec = float64(u.RunNs) / 1e6 / win
	u.WakeupsPerSec = float64(u.Switches) / win
	run.Idle = u
	f.log.Info("idle usage", "build", run.Build, "cpu_ms_per_s", fmt.Sprintf("%.3f", u.CPUMsPerSec), "wakeups_per_s", fmt.Sprintf("%.2f", u.WakeupsPerSec))
	return nil
}

// rssPoint reads the daemon's memory now.
func (f *footprint) rssPoint(when string) (rssPoint, error) {
	pid := f.d.pid()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return rssPoint{}, fmt.Errorf("daemon gone? %w; log:\n%s", err, fpFileTail(f.d.logPath, 2000))
	}
	st, err := parseStatus(data)
	if err != nil {
		return rssPoint{}, err
	}
	rollup, err := readSmapsRollup(pid)
	if err != nil {
		return rssPoint{}, err
	}
	pt := newRSSPoint(when, st, rollup)
	pt.BinaryKiB, err = binaryFileRSS(pid)
	if err != nil {
		return rssPoint{}, err
	}
	return pt, nil
}

func readSmapsRollup(pid int) (smapsRollup, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return smapsRollup{}, fmt.Errorf("smaps_rollup of pid %d: %w", pid, err)
	}
	return parseSmapsRollup(data)
}

// binaryFileRSS is the part of pid's RssFile that is its own executable.
func binaryFileRSS(pid int) (int64, error) {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return 0, fmt.Errorf("executable of pid %d: %w", pid, err)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, fmt.Errorf("smaps of pid %d: %w", pid, err)
	}
	return smapsFileRSS(data, exe)
}

// churn creates ChurnPods pods, ChurnWidth at a time (every other one
// with a pod cgroup, the others with an app container, as in the e2e
// churn), waits until the daemon has attached them, removes them again,
// and samples the daemon's memory every 100 ms throughout. Then it waits
// for the daemon to give the memory back.
func (f *footprint) churn(ctx context.Context, run *daemonRun) error {
	pid := f.d.pid()
	var (
		mu       sync.Mutex
		peak     procStatus
		peakRSS  int64
		peakRoll smapsRollup
		samples  int
		stop     = make(chan struct{})
		stopped  = make(chan struct{})
	)
	go func() {
		defer close(stopped)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
				if st, err := parseStatus(data); err == nil {
					mu.Lock()
					samples++
					if st.RssAnon > peak.RssAnon {
						peak = st
						// smaps_rollup walks the page tables: only
						// for a new peak.
						peakRoll, _ = readSmapsRollup(pid)
					}
					peakRSS = max(peakRSS, st.VmRSS)
					mu.Unlock()
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	stopSampling := func() {
		if stop != nil {
			close(stop)
			<-stopped
			stop = nil
		}
	}
	defer stopSampling()

	n := f.set.ChurnPods
	c := &churnInfo{Pods: n, Width: f.set.ChurnWidth}
	run.Churn = c
	ids := make([]string, n)
	t0 := time.Now()
	err := fpParallel(ctx, n, f.set.ChurnWidth, func(ctx context.Context, i int) error {
		p, err := f.lab.RunPod(ctx, rtlab.PodSpec{Name: fmt.Sprintf("churn-%d", i), Namespace: fpNamespace, PodCgroup: i%2 == 0})
		if err != nil {
			return err
		}
		ids[i] = p.ID
		if i%2 == 1 {
			_, err = f.lab.StartContainer(ctx, p, rtlab.ContainerSpec{Name: "main", Command: []string{"sleep", "3600"}})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("churn: create pods: %w", err)
	}
	c.UpSec = time.Since(t0).Seconds()
	if err := f.waitAttached(ctx, c); err != nil {
		return err
	}
	t1 := time.Now()
	err = fpParallel(ctx, n, f.set.ChurnWidth, func(ctx context.Context, i int) error {
		return f.lab.RemovePod(ctx, ids[i])
	})
	if err != nil {
		return fmt.Errorf("churn: remove pods: %w", err)
	}
	c.DownSec = time.Since(t1).Seconds()
	removed := time.Now()
	stopSampling()
	mu.Lock()
	pt := newRSSPoint("peak", peak, peakRoll)
	pt.Samples, pt.PeakVmRSS = samples, peakRSS
	mu.Unlock()
	run.RSS = append(run.RSS, pt)
	f.log.Info("churn", "build", run.Build, "pods", n, "up", time.Duration(c.UpSec*float64(time.Second)).Round(time.Millisecond),
		"down", time.Duration(c.DownSec*float64(time.Second)).Round(time.Millisecond), "peak_anon_kib", peak.RssAnon,
		"peak_rss_kib", peakRSS, "samples", samples)

	// After churn: the daemon frees memory 5 s after its last reconcile.
	// Wait at least AfterMin, then until RssAnon has not moved for 2 s,
	// at most AfterMax.
	var last int64 = -1
	var stableSince time.Time
	for {
		if err := fpSleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
		pt, err := f.rssPoint("after_churn")
		if err != nil {
			return err
		}
		now := time.Now()
		c.AfterAnonKiB = append(c.AfterAnonKiB, pt.RssAnon)
		if pt.RssAnon != last {
			last, stableSince = pt.RssAnon, now
		}
		waited := now.Sub(removed)
		if (waited >= f.set.AfterMin && now.Sub(stableSince) >= 2*time.Second) || waited >= f.set.AfterMax {
			pt.AfterSec = waited.Seconds()
			run.RSS = append(run.RSS, pt)
			f.log.Info("RSS after churn", "rss_kib", pt.VmRSS, "anon_kib", pt.RssAnon, "waited", waited.Round(100*time.Millisecond))
			return nil
		}
	}
}

// waitAttached waits until the daemon has attached a cgroup for every
// churned pod (at most 15 s), and records what Patu holds at the top.
func (f *footprint) waitAttached(ctx context.Context, c *churnInfo) error {
	dp, err := bpf.Open(fpPinDir)
	if err != nil {
		return fmt.Errorf("open patu pins: %w", err)
	}
	defer dp.Close()
	t0 := time.Now()
	for {
		pods, err1 := dp.Pods()
		atts, err2 := dp.Attachments()
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		c.TopPods, c.TopAttachments = len(pods), len(atts)
		if len(pods) >= c.Pods && len(atts) >= c.Pods {
			c.AttachedSec = time.Since(t0).Seconds()
			return nil
		}
		if time.Since(t0) > 15*time.Second {
			f.rep.Notes = append(f.rep.Notes, fmt.Sprintf("churn: after 15 s Patu held %d pod records and %d cgroup attachments for %d pods",
				len(pods), len(atts), c.Pods))
			return nil
		}
		if err := fpSleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// podStarts times RunPod on both labs, interleaved: in each round one pod
// on each lab, the order alternating, each removed before the next starts.
// One round first is not counted (the first pod of a lab is slower).
func (f *footprint) podStarts(ctx context.Context) error {
	pt := &pairTimes{}
	var with, without, diffs []float64
	for i := -1; i < f.set.Starts; i++ {
		labs := []*rtlab.Lab{f.base, f.lab}
		if i%2 != 0 {
			labs[0], labs[1] = labs[1], labs[0]
		}
		var ms [2]float64
		for _, l := range labs {
			if err := ctx.Err(); err != nil {
				return err
			}
			t0 := time.Now()
			p, err := l.RunPod(ctx, rtlab.PodSpec{Name: fmt.Sprintf("start-%d", i+1), Namespace: fpNamespace, PodCgroup: true})
			d := time.Since(t0)
			if err != nil {
				return fmt.Errorf("pod start: %w", err)
			}
			if err := l.RemovePod(ctx, p.ID); err != nil {
				return fmt.Errorf("pod start: %w", err)
			}
			if l == f.lab {
				ms[1] = fpMs(d)
			} else {
				ms[0] = fpMs(d)
			}
		}
		if i < 0 {
			continue
		}
		without, with = append(without, ms[0]), append(with, ms[1])
		diffs = append(diffs, ms[1]-ms[0])
	}
	pt.Without, pt.With = newFPTiming(without), newFPTiming(with)
	pt.DiffP50 = pt.With.P50 - pt.Without.P50
	pt.PairedDiffMedian = quantile(diffs, 0.5)
	f.rep.PodStart = pt
	f.log.Info("pod start", "without_p50_ms", fpRound1(pt.Without.P50), "with_p50_ms", fpRound1(pt.With.P50))
	return nil
}

func fpMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fpRound1(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }

// fpParallel runs fn(ctx, i) for i in [0,n), width at a time. The first
// error cancels the ctx the others get; all errors are returned.
func fpParallel(ctx context.Context, n, width int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, max(width, 1))
	)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		if ctx.Err() != nil {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, i); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				cancel()
			}
		}()
	}
	wg.Wait()
	if len(errs) == 0 && ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.Join(errs...)
}

// footprintSection runs the footprint, adds it to rep, rewrites the JSON
// report and prints the section's tables. A failed footprint is written
// and printed as far as it got.
func footprintSection(ctx context.Context, w io.Writer, log *slog.Logger, cfg config, rep *report) error {
	set := footprintSettings(cfg)
	log.Info("footprint", "idle_window", set.Idle, "churn_pods", set.ChurnPods, "pod_starts", set.Starts, "cni_pairs", set.CNIPairs)
	fp, err := runFootprint(ctx, log, set)
	rep.Footprint = fp
	if rep.Finished.IsZero() {
		rep.Finished = fp.Finished
	}
	if cfg.out != "" {
		if werr := writeJSON(cfg.out, *rep); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	writeFootprintTable(w, fp, rep.Machine)
	if cfg.out != "" {
		fmt.Fprintf(w, "\nJSON with every sample: %s (footprint)\n", cfg.out)
	}
	if err != nil {
		return fmt.Errorf("footprint: %w", err)
	}
	return nil
}
