package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/patu-dev/patu/internal/apps"
)

// The real-application section (-only apps, and the last section of a
// full run): the cases of internal/apps at their full sizes, on the
// bridge path and on Patu's (PATU_APPS_PATHS adds patu-socket),
// interleaved in rounds (PATU_APPS_CASES picks cases by name). For each case it prints the node's kernel CPU
// (system + irq + softirq, all CPUs) and the applications' throughput
// against the bridge path's, and the share of the bytes Patu carried.

// The section's names: prefix ap*, subnets inside 10.210.0.0/16 and
// fd00:210::/64.
const appsPrefix = "apb"

var (
	appsSubnet4 = netip.MustParsePrefix("10.210.9.0/24")
	appsSubnet6 = netip.MustParsePrefix("fd00:210::9:0/112")
)

// appsReport is the section's JSON.
type appsReport struct {
	Machine  machine         `json:"machine"`
	Started  time.Time       `json:"started"`
	Finished time.Time       `json:"finished"`
	Config   map[string]any  `json:"config"`
	Cases    []appsCaseStats `json:"cases"`
	Runs     []apps.Outcome  `json:"runs"`
}

// appsCaseStats summarises one case on one path: medians over the rounds
// of the runs that passed, and ratios to the bridge path's medians.
type appsCaseStats struct {
	Case      string    `json:"case"`
	Desc      string    `json:"desc"`
	Path      apps.Path `json:"path"`
	Runs      int       `json:"runs"`
	Failed    int       `json:"failed"`
	MBps      float64   `json:"mb_per_s"`
	KernelCPU float64   `json:"kernel_cpu_s"`
	PatuShare float64   `json:"patu_share"`
	// Ratios to the bridge path (0 on the bridge path itself).
	MBpsRatio      float64  `json:"mb_per_s_ratio,omitempty"`
	KernelCPURatio float64  `json:"kernel_cpu_ratio,omitempty"`
	Errors         []string `json:"errors,omitempty"`
}

func appsOut(cfg config) string {
	if cfg.out == "" || cfg.only == "apps" {
		return cfg.out
	}
	return strings.TrimSuffix(cfg.out, ".json") + "-apps.json"
}

func appsSection(ctx context.Context, w io.Writer, log *slog.Logger, cfg config, out string) error {
	paths, err := apps.PathsFromEnv()
	if err != nil {
		return err
	}
	scale, rounds := 1, cfg.runs
	if cfg.quick {
		scale, rounds = 4, 1
	}
	r, err := apps.NewRunner(ctx, apps.Config{Prefix: appsPrefix, Subnet4: appsSubnet4, Subnet6: appsSubnet6,
		Scale: scale, Log: log})
	if err != nil {
		return err
	}
	defer r.Close()
	// PATU_APPS_CASES (comma-separated names) picks some of the cases.
	pick := map[string]bool{}
	for _, n := range strings.Split(os.Getenv("PATU_APPS_CASES"), ",") {
		if n = strings.TrimSpace(n); n != "" {
			pick[n] = true
		}
	}
	var cases []apps.Case
	for _, c := range r.Cases() {
		if !c.NoBench && (len(pick) == 0 || pick[c.Name]) {
			cases = append(cases, c)
		}
	}
	if len(cases) == 0 {
		return fmt.Errorf("apps: PATU_APPS_CASES=%q names no case", os.Getenv("PATU_APPS_CASES"))
	}
	if miss := apps.Missing(cases); len(miss) > 0 {
		return fmt.Errorf("apps: programs missing: %s (run hack/apps-deps.sh)", strings.Join(miss, ", "))
	}
	rep := appsReport{Machine: describeMachine(), Started: time.Now(), Config: map[string]any{
		"rounds": rounds, "scale": scale, "paths": paths, "prefix": appsPrefix,
		"subnet4": appsSubnet4.String(), "subnet6": appsSubnet6.String()}}
	log.Info("apps benchmark", "cases", len(cases), "paths", len(paths), "rounds", rounds, "scale", scale)
	for round := range rounds {
		for ci, c := range cases {
			// The order of the paths rotates, so drift in the machine's
			// speed hits them alike.
			for k := range paths {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("apps: interrupted: %w", err)
				}
				p := paths[(k+round+ci)%len(paths)]
				o := r.Run(ctx, c, p)
				rep.Runs = append(rep.Runs, o)
				attrs := []any{"round", round + 1, "case", c.Name, "path", p, "mb_per_s", fmt.Sprintf("%.0f", o.MBps()),
					"kernel_cpu_s", fmt.Sprintf("%.2f", o.Stats.KernelCPU), "patu_share", fmt.Sprintf("%.2f", o.Stats.PatuShare())}
				if o.Failed() {
					log.Warn("app run failed", append(attrs, "errors", o.Errors)...)
				} else {
					log.Info("app run", attrs...)
				}
			}
		}
	}
	rep.Finished = time.Now()
	rep.Cases = summariseApps(cases, paths, rep.Runs)
	if out != "" {
		if err := writeJSON(out, rep); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\nReal applications (internal/apps): %s, %d CPUs, kernel %s, %s; %d round(s), sizes 1/%d of full, took %s\n\n",
		rep.Machine.CPUModel, rep.Machine.NProc, rep.Machine.Kernel, rep.Machine.Date, rounds, scale,
		rep.Finished.Sub(rep.Started).Round(time.Second))
	writeAppsTable(w, rep.Cases)
	if out != "" {
		fmt.Fprintf(w, "\nJSON with every run: %s\n", out)
	}
	return nil
}

// summariseApps takes medians per case and path over the passing runs and
// relates each path to the bridge path. A failed run (or a run whose
// result differs from the bridge path's in the same round) is counted and
// named, never averaged in.
func summariseApps(cases []apps.Case, paths []apps.Path, runs []apps.Outcome) []appsCaseStats {
	var out []appsCaseStats
	for _, c := range cases {
		var bridge appsCaseStats
		for _, p := range paths {
			s := appsCaseStats{Case: c.Name, Desc: c.Desc, Path: p}
			var mbps, cpu, share []float64
			var bridgeRuns []apps.Outcome
			for _, o := range runs {
				if o.Case == c.Name && o.Path == apps.Bridge {
					bridgeRuns = append(bridgeRuns, o)
				}
			}
			i := 0
			for _, o := range runs {
				if o.Case != c.Name || o.Path != p {
					continue
				}
				s.Runs++
				errs := o.Errors
				if p != apps.Bridge && i < len(bridgeRuns) {
					errs = append(errs, apps.Compare(bridgeRuns[i], o)...)
				}
				i++
				if len(errs) > 0 {
					s.Failed++
					s.Errors = append(s.Errors, errs...)
					continue
				}
				mbps = append(mbps, o.MBps())
				cpu = append(cpu, o.Stats.KernelCPU)
				share = append(share, o.Stats.PatuShare())
			}
			s.MBps, s.KernelCPU, s.PatuShare = medianOf(mbps), medianOf(cpu), medianOf(share)
			if p == apps.Bridge {
				bridge = s
			} else {
				if bridge.MBps > 0 {
					s.MBpsRatio = s.MBps / bridge.MBps
				}
				if bridge.KernelCPU > 0 {
					s.KernelCPURatio = s.KernelCPU / bridge.KernelCPU
				}
			}
			out = append(out, s)
		}
	}
	return out
}

// medianOf is median (stats.go) that takes no runs as 0.
func medianOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return median(v)
}

func writeAppsTable(w io.Writer, rows []appsCaseStats) {
	fmt.Fprintf(w, "%-18s %-12s %5s %9s %7s %10s %7s %12s %8s\n", "case", "path", "runs", "MB/s", "÷bridge",
		"kernel cpu", "÷bridge", "bytes: patu", "bridge")
	for _, s := range rows {
		res := fmt.Sprintf("%d", s.Runs)
		if s.Failed > 0 {
			res = fmt.Sprintf("%d/%dF", s.Runs-s.Failed, s.Runs)
		}
		ratio := func(v float64) string {
			if s.Path == apps.Bridge || v == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", v)
		}
		fmt.Fprintf(w, "%-18s %-12s %5s %9.0f %7s %9.2fs %7s %11.0f%% %7.0f%%\n", s.Case, s.Path, res, s.MBps, ratio(s.MBpsRatio),
			s.KernelCPU, ratio(s.KernelCPURatio), 100*s.PatuShare, 100*(1-s.PatuShare))
	}
	var failed []string
	for _, s := range rows {
		for _, e := range s.Errors {
			failed = append(failed, fmt.Sprintf("  %s on %s: %s", s.Case, s.Path, firstLine(e)))
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "\nfailed runs (not in the medians):\n%s\n", strings.Join(failed, "\n"))
	}
}
