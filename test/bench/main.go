package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/internal/gotool"
)

type config struct {
	runs     int
	duration time.Duration
	quick    bool
	only     string
	out      string
	demo     bool
	pinDir   string
	keep     bool
	// The footprint section's sizes; 0 takes the default of the mode
	// (footprintSettings).
	fpIdle                  time.Duration
	fpPods, fpStarts, fpCNI int
	// fpAgainst is a git revision whose daemon the footprint measures
	// beside this build's.
	fpAgainst string
}

func main() {
	var cfg config
	flag.IntVar(&cfg.runs, "runs", 3, "repeat every measurement this many times")
	flag.DurationVar(&cfg.duration, "duration", 4*time.Second, "length of each measurement (whole seconds)")
	flag.BoolVar(&cfg.quick, "quick", false, "1 run of 2 s: RR 64 B and 1 KiB, bulk 64 KiB only")
	flag.StringVar(&cfg.only, "only", "", "run only rr, bulk, footprint, xdp or services measurements")
	flag.StringVar(&cfg.out, "o", "out/bench.json", "write the JSON report here, empty for none (-quick, -demo: out/bench-quick.json; -only footprint: out/bench-footprint[-quick].json)")
	flag.BoolVar(&cfg.demo, "demo", false, "show the redirect working, then a -quick comparison")
	flag.StringVar(&cfg.pinDir, "pin-dir", pinDirBench, "bpffs directory for the benchmark's own Patu pins")
	flag.BoolVar(&cfg.keep, "keep-output", false, "keep every tool's raw output in the JSON (default: only of failed runs)")
	flag.DurationVar(&cfg.fpIdle, "footprint-idle", 0, "footprint: the daemon's idle CPU and wake-up window (default 30s, 10s with -quick)")
	flag.IntVar(&cfg.fpPods, "footprint-pods", 0, "footprint: pods churned for the daemon's peak RSS (default 50, 10 with -quick)")
	flag.IntVar(&cfg.fpStarts, "footprint-starts", 0, "footprint: timed pod starts per lab (default 20, 5 with -quick)")
	flag.StringVar(&cfg.fpAgainst, "footprint-against", "", "footprint: also measure the daemon built from this git revision, side by side")
	flag.IntVar(&cfg.fpCNI, "footprint-cni", 0, "footprint: timed CNI ADD/DEL pairs and single execs (default 50, 12 with -quick)")
	flag.Parse()
	explicitOut := false
	flag.Visit(func(f *flag.Flag) { explicitOut = explicitOut || f.Name == "o" })
	switch {
	case explicitOut:
	case cfg.only == "xdp":
		cfg.out = "out/bench-xdp.json"
		if cfg.quick {
			cfg.out = "out/bench-xdp-quick.json"
		}
	case cfg.only == "services":
		cfg.out = "out/bench-services.json"
		if cfg.quick {
			cfg.out = "out/bench-services-quick.json"
		}
	case cfg.only == "footprint":
		// A footprint run alone must not overwrite a whole report.
		cfg.out = "out/bench-footprint.json"
		if cfg.quick {
			cfg.out = "out/bench-footprint-quick.json"
		}
	case cfg.quick || cfg.demo:
		// A quick run must not overwrite the last full one.
		cfg.out = "out/bench-quick.json"
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, log, cfg)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, cfg config) error {
	if cfg.demo {
		cfg.quick = true
	}
	if cfg.quick {
		cfg.runs, cfg.duration = 1, 2*time.Second
	}
	if cfg.runs < 1 {
		return fmt.Errorf("-runs %d: need at least 1", cfg.runs)
	}
	if cfg.duration < time.Second || cfg.duration%time.Second != 0 {
		return fmt.Errorf("-duration %s: sockperf and iperf3 take whole seconds (at least 1s)", cfg.duration)
	}
	switch cfg.only {
	case "", "rr", "bulk", "footprint", "xdp", "services":
	default:
		return fmt.Errorf("-only %q: want rr, bulk, footprint, xdp or services", cfg.only)
	}
	if cfg.fpIdle < 0 || (cfg.fpIdle > 0 && cfg.fpIdle < time.Second) || cfg.fpPods < 0 || cfg.fpStarts < 0 || cfg.fpCNI < 0 {
		return errors.New("-footprint-*: want an idle window of at least 1s and counts of at least 1 (0: the default)")
	}
	if os.Geteuid() != 0 {
		return errors.New("the benchmark needs root (network namespaces, cgroups, BPF): run it with sudo")
	}
	if cfg.only == "xdp" {
		return xdpSection(ctx, os.Stdout, log, cfg, xdpOut(cfg))
	}
	if cfg.only == "services" {
		return services(ctx, log, cfg)
	}
	if cfg.only == "footprint" {
		rep := report{Machine: describeMachine(), Started: time.Now(), Config: map[string]any{"quick": cfg.quick, "only": cfg.only}}
		return footprintSection(ctx, os.Stdout, log, cfg, &rep)
	}
	rep, err := comparison(ctx, log, cfg)
	// The footprint follows the comparison in a full run (make bench),
	// once the comparison's topology and pins are gone.
	if err != nil || cfg.demo || cfg.only != "" {
		return err
	}
	if err := footprintSection(ctx, os.Stdout, log, cfg, &rep); err != nil {
		return err
	}
	// The XDP ingress comparison (xdp*.go), then Services, each in its own
	// JSON file.
	if err := xdpSection(ctx, os.Stdout, log, cfg, xdpOut(cfg)); err != nil {
		return err
	}
	return services(ctx, log, cfg)
}

// services runs the services section with its own patu-testpeer.
func services(ctx context.Context, log *slog.Logger, cfg config) error {
	if err := needTools(); err != nil {
		return err
	}
	peer, done, err := buildPeer(ctx)
	if err != nil {
		return err
	}
	defer done()
	_, err = servicesSection(ctx, os.Stdout, log, cfg, peer)
	return err
}

func needTools() error {
	for _, tool := range []string{"sockperf", "iperf3", "taskset", "ip", "iptables-restore", "ip6tables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: run make deps (or apt-get install sockperf iperf3 util-linux iproute2 iptables)", tool)
		}
	}
	return nil
}

// goBuild builds pkg into bin with the project's Go.
func goBuild(ctx context.Context, bin, pkg string) error {
	if out, err := exec.CommandContext(ctx, gotool.Path(), "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, tail(string(out), 1000))
	}
	return nil
}

// comparison runs the side-by-side data path comparison (after the demo
// with -demo) and returns its report, already written and printed.
func comparison(ctx context.Context, log *slog.Logger, cfg config) (report, error) {
	if err := needTools(); err != nil {
		return report{}, err
	}
	peer, done, err := buildPeer(ctx)
	if err != nil {
		return report{}, err
	}
	defer done()
	bn := &bench{log: log, duration: cfg.duration, pinDir: cfg.pinDir, keepOutput: cfg.keep, peerBin: peer}
	// Teardown runs on every way out, Ctrl-C included: the signal cancels
	// ctx, which kills the tools, and we come back here.
	defer func() {
		if err := bn.teardown(); err != nil {
			log.Error("cleanup", "error", err)
		}
	}()
	if err := bn.setupTopology(); err != nil {
		return report{}, err
	}
	if cfg.demo {
		if err := demo(ctx, os.Stdout, bn); err != nil {
			return report{}, err
		}
	}
	return compare(ctx, os.Stdout, log, bn, cfg)
}

// cells lists the measurements of a run.
func cells(cfg config) []cell {
	var out []cell
	rrSizes, bulkSizes, cpus := []int{64, 1024, 16384}, []int{1024, 64 << 10, 1 << 20}, []int{-1, 0}
	if cfg.quick {
		rrSizes, bulkSizes, cpus = []int{64, 1024}, []int{64 << 10}, []int{-1}
	}
	if cfg.only != "bulk" {
		for _, cpu := range cpus {
			for _, sz := range rrSizes {
				out = append(out, cell{Kind: kindRR, Size: sz, CPU: cpu})
			}
		}
	}
	if cfg.only != "rr" {
		for _, sz := range bulkSizes {
			out = append(out, cell{Kind: kindBulk, Size: sz, CPU: -1})
		}
		// Bulk with a reader that does work on the bytes: it verifies
		// each, as fast as it can or capped, as most readers are.
		verify, capped := 1<<30, 512<<20
		if cfg.quick {
			verify, capped = 256<<20, 128<<20
		}
		out = append(out, cell{Kind: kindVerify, Size: verify, CPU: -1}, cell{Kind: kindVerify, Size: capped, CPU: -1, Rate: 300})
	}
	return out
}

// plan is what compare measures: cells on paths.
type plan struct {
	cells []cell
	paths []path
	out   string // the JSON report, empty for none
}

// compare runs every cell on every path, interleaved: in each round, each
// cell runs on the paths back to back, in an order that rotates, so that
// drift in the machine's speed hits all paths alike.
func compare(ctx context.Context, w io.Writer, log *slog.Logger, bn *bench, cfg config) (report, error) {
	return comparePlan(ctx, w, log, bn, cfg, plan{cells: cells(cfg), paths: allPaths, out: cfg.out})
}

func comparePlan(ctx context.Context, w io.Writer, log *slog.Logger, bn *bench, cfg config, pl plan) (report, error) {
	cs, paths := pl.cells, pl.paths
	rep := report{Machine: describeMachine(), Started: time.Now(), Config: map[string]any{
		"runs": cfg.runs, "duration_s": cfg.duration.Seconds(), "quick": cfg.quick, "only": cfg.only,
		"topology_prefix": bn.prefix, "subnet4": bn.subnet4.String(), "subnet6": bn.subnet6.String(), "pin_dir": bn.pinDir,
		"address_family": "ipv4",
	}}
	// Checked at the start and the end: another Patu's global tracepoint
	// costs every path a little.
	others := otherPatuPins(bn.pinDir)
	noted := len(others) > 0
	if noted {
		rep.Notes = append(rep.Notes, otherPatuNote(others))
	}
	total := len(cs) * len(paths) * cfg.runs
	est := estimate(cs, cfg, len(paths))
	log.Info("benchmark", "cells", len(cs), "runs", cfg.runs, "duration", cfg.duration, "measurements", total,
		"estimated", est.Round(10*time.Second).String())

	n := 0
	for round := 0; round < cfg.runs; round++ {
		for ci, c := range cs {
			for k := range paths {
				p := paths[(k+round+ci)%len(paths)]
				if err := ctx.Err(); err != nil {
					return rep, fmt.Errorf("interrupted after %d of %d measurements: %w", n, total, err)
				}
				s := bn.measure(ctx, round, c, p)
				n++
				rep.Samples = append(rep.Samples, s)
				logSample(log, n, total, s)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("interrupted: %w", err)
	}
	rep.Finished = time.Now()
	for _, d := range defineMetrics(cs) {
		rep.Metrics = append(rep.Metrics, evaluate(d, rep.Samples))
	}
	for _, d := range proofMetrics(cs) {
		rep.Proof = append(rep.Proof, evaluate(d, rep.Samples))
	}
	rep.Notes = append(rep.Notes, proofWarnings(rep.Samples)...)
	if others := otherPatuPins(bn.pinDir); len(others) > 0 && !noted {
		rep.Notes = append(rep.Notes, otherPatuNote(others))
	}
	// The JSON first: a reader piping the table into head must not lose it.
	if pl.out != "" {
		if err := writeJSON(pl.out, rep); err != nil {
			return rep, err
		}
	}

	fmt.Fprintf(w, "\nPatu benchmark: %s, %d CPUs, kernel %s, %s; %d run(s) of %s each, took %s\n\n",
		rep.Machine.CPUModel, rep.Machine.NProc, rep.Machine.Kernel, rep.Machine.Date, cfg.runs, cfg.duration,
		rep.Finished.Sub(rep.Started).Round(time.Second))
	writeTable(w, rep)
	if pl.out != "" {
		fmt.Fprintf(w, "\nJSON with every sample: %s\n", pl.out)
	}
	return rep, nil
}

// estimate is how long the measurements take: sockperf sleeps 2 s after
// connecting before it starts, and every run has some set-up.
func estimate(cs []cell, cfg config, paths int) time.Duration {
	var per time.Duration
	for _, c := range cs {
		per += cfg.duration + 700*time.Millisecond
		if c.Kind == kindRR {
			per += 2 * time.Second
		}
	}
	return per * time.Duration(paths*cfg.runs)
}

func logSample(log *slog.Logger, n, total int, s sample) {
	attrs := []any{"n", fmt.Sprintf("%d/%d", n, total), "cell", s.Cell, "path", s.Path}
	switch {
	case !s.ok():
		log.Warn("measurement failed", append(attrs, "error", firstLine(s.Error))...)
		return
	case s.RR != nil:
		attrs = append(attrs, "p50_us", s.RR.P50(), "p99_us", s.RR.P99(), "tx", s.RR.Received,
			"cpu_ms_per_1k_tx", fmt.Sprintf("%.2f", s.CPUPer1kTx*1000))
	case s.Bulk != nil:
		attrs = append(attrs, "gbps", fmt.Sprintf("%.2f", s.Bulk.Gbps()), "cpu_s_per_gb", fmt.Sprintf("%.3f", s.CPUPerGB))
	}
	attrs = append(attrs, "veth_pkts", s.Veth)
	if s.Patu != nil {
		attrs = append(attrs, "redirected_msgs", s.Patu.RedirectMsgs, "tcp_msgs", s.Patu.FallbackMsgs)
	}
	log.Info("measured", attrs...)
}

// proofWarnings flags patu runs whose counters do not show a redirect.
func proofWarnings(samples []sample) []string {
	var out []string
	for _, s := range samples {
		remote := strings.HasSuffix(s.Cell, viaRemote.suffix())
		if s.Path == pathPatu && s.ok() && s.Patu != nil && s.Patu.Admitted == 0 && !remote {
			out = append(out, fmt.Sprintf("run %d %s on patu: no connection admitted to the packet path", s.Round, s.Cell))
		}
		if s.Path == pathPatu && s.ok() && s.Patu != nil && s.Patu.Admitted != 0 && remote {
			out = append(out, fmt.Sprintf("run %d %s on patu: %d connections to another node admitted to the packet path", s.Round, s.Cell, s.Patu.Admitted))
		}
		if s.Path != pathSocket || !s.ok() || s.Patu == nil {
			continue
		}
		if s.Patu.RedirectMsgs == 0 {
			out = append(out, fmt.Sprintf("run %d %s on socket: nothing was redirected", s.Round, s.Cell))
		} else if s.Patu.FallbackMsgs*10 > s.Patu.RedirectMsgs {
			out = append(out, fmt.Sprintf("run %d %s on socket: %d of %d messages went over TCP (%v)", s.Round, s.Cell,
				s.Patu.FallbackMsgs, s.Patu.FallbackMsgs+s.Patu.RedirectMsgs, nonZero(s.Patu.Fallback)))
		}
		if s.Patu.LeftInMap > 0 {
			out = append(out, fmt.Sprintf("run %d %s on patu: %d sockets still in the socket map after the tools exited", s.Round, s.Cell, s.Patu.LeftInMap))
		}
	}
	return out
}

func nonZero[T comparable](m map[string]T) map[string]T {
	var zero T
	out := map[string]T{}
	for k, v := range m {
		if v != zero {
			out[k] = v
		}
	}
	return out
}

// machine describes where the numbers were measured.
type machine struct {
	NProc    int    `json:"nproc"`
	Kernel   string `json:"kernel"`
	CPUModel string `json:"cpu_model"`
	Date     string `json:"date"`
	Go       string `json:"go"`
	Sockperf string `json:"sockperf"`
	Iperf3   string `json:"iperf3"`
}

func describeMachine() machine {
	m := machine{NProc: runtime.NumCPU(), Date: time.Now().Format(time.RFC3339), Go: runtime.Version()}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	m.Sockperf = toolVersion("sockperf", "--version")
	m.Iperf3 = toolVersion("iperf3", "--version")
	return m
}

func toolVersion(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if l := strings.TrimSpace(ansiEscape.ReplaceAllString(line, "")); l != "" {
			return l
		}
	}
	return ""
}

func otherPatuNote(pins []string) string {
	return fmt.Sprintf("other Patu instances were loaded during the run (%s): their receive-proof tracepoint runs on every recvmsg, on every path",
		strings.Join(pins, ", "))
}

// otherPatuPins lists Patu pin directories other than ours: another
// Patu loaded on this machine adds its tracepoint to every path.
func otherPatuPins(own string) []string {
	matches, _ := filepath.Glob("/sys/fs/bpf/patu*")
	var out []string
	for _, m := range matches {
		if m != own {
			out = append(out, m)
		}
	}
	return out
}

// writeJSON writes the report atomically: a reader never sees half a file.
func writeJSON(path string, rep any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
