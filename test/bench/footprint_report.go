package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets of the footprint section. "≈ 0" for the idle daemon is read as
// at most 1 ms of CPU and 1 wake-up per second. Memory targets are on the
// daemon's anonymous pages (its heap, stacks, data): the file pages of its
// own binary are shared page cache the kernel can drop, and are reported
// beside them.
var (
	targetPatuMiB     = target{"<=", 25}
	targetCNIMiB      = target{"<=", 20}
	targetAnonIdleMiB = target{"<=", 4}
	targetAnonPeakMiB = target{"<=", 8}
	targetIdleCPU     = target{"<=", 1} // ms per s
	targetIdleWakeups = target{"<=", 1} // per s
	targetCNIOverhead = target{"<=", 5} // ms, difference of p50s
)

// footprintReport is the "footprint" object of the JSON report.
type footprintReport struct {
	Settings   fpSettingsReport `json:"settings"`
	Containerd string           `json:"containerd"`
	Started    time.Time        `json:"started"`
	Finished   time.Time        `json:"finished"`
	Binaries   []binaryInfo     `json:"binaries"`
	// Daemons are the daemon runs: this build first, then the build of
	// -footprint-against, measured the same way on the same lab.
	Daemons  []*daemonRun `json:"daemons"`
	PodStart *pairTimes   `json:"pod_start,omitempty"`
	CNIAdd   *pairTimes   `json:"cni_add,omitempty"`
	// CNIAddNoop is the same with a no-op Go plugin in patu's place.
	CNIAddNoop *pairTimes `json:"cni_add_noop_plugin,omitempty"`
	// CNIAddSplit is where each conflist's ADD time goes.
	CNIAddSplit []cniSplit   `json:"cni_add_split,omitempty"`
	CNIDel      *pairTimes   `json:"cni_del,omitempty"`
	Exec        []execTimes  `json:"exec,omitempty"`
	Checks      []checkValue `json:"checks"`
	Notes       []string     `json:"notes,omitempty"`
	Error       string       `json:"error,omitempty"`
}

type fpSettingsReport struct {
	Flavor         string  `json:"flavor"`
	Lab            string  `json:"lab"`
	BaselineLab    string  `json:"baseline_lab"`
	CNIRig         string  `json:"cni_rig"`
	PinDir         string  `json:"pin_dir"`
	SettleSec      float64 `json:"settle_s"`
	IdleSec        float64 `json:"idle_window_s"`
	ChurnPods      int     `json:"churn_pods"`
	ChurnWidth     int     `json:"churn_width"`
	PodStarts      int     `json:"pod_starts_per_lab"`
	CNIPairs       int     `json:"cni_pairs"`
	AfterChurnMaxS float64 `json:"after_churn_max_wait_s"`
}

func (s fpSettings) report() fpSettingsReport {
	return fpSettingsReport{
		Flavor: fpFlavor, Lab: fpPrefix + " " + fpSubnet.String() + " (patu chained, daemon running)",
		BaselineLab: fpBasePrefix + " " + fpBaseSubnet.String() + " (no patu)",
		CNIRig:      fmt.Sprintf("netns %s, %s, %s; bridge %s %s", fpNetnsNode, fpNetnsPod, fpNetnsExec, fpBridge, fpCNISubnet),
		PinDir:      fpPinDir, SettleSec: s.Settle.Seconds(), IdleSec: s.Idle.Seconds(),
		ChurnPods: s.ChurnPods, ChurnWidth: s.ChurnWidth, PodStarts: s.Starts, CNIPairs: s.CNIPairs,
		AfterChurnMaxS: s.AfterMax.Seconds(),
	}
}

// daemonRun is one daemon binary measured: memory idle, at the peak of a
// churn and after it, idle CPU and wake-ups.
type daemonRun struct {
	// Build is "this build" or the git revision it was built from.
	Build  string     `json:"build"`
	Binary binaryInfo `json:"binary"`
	// ReadySec is start to ready file: patu load, connecting to the
	// runtime, the first reconcile.
	ReadySec float64    `json:"ready_s,omitempty"`
	RSS      []rssPoint `json:"rss"`
	Churn    *churnInfo `json:"churn,omitempty"`
	Idle     *idleUsage `json:"idle,omitempty"`
}

// point returns the reading taken when ("idle", "peak", "after_churn").
func (d *daemonRun) point(when string) (rssPoint, bool) {
	for _, p := range d.RSS {
		if p.When == when {
			return p, true
		}
	}
	return rssPoint{}, false
}

type binaryInfo struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
}

func (b binaryInfo) MiB() float64 { return float64(b.Bytes) / (1 << 20) }

// rssPoint is the daemon's memory at one moment: "idle" (Settle after
// ready), "peak" (highest RssAnon sampled during churn) or "after_churn".
// Sizes in KiB, from /proc/PID/status and /proc/PID/smaps_rollup.
type rssPoint struct {
	When     string `json:"when"`
	VmRSS    int64  `json:"vm_rss_kib"`
	RssAnon  int64  `json:"rss_anon_kib"`
	RssFile  int64  `json:"rss_file_kib"`
	RssShmem int64  `json:"rss_shmem_kib"`
	Pss      int64  `json:"pss_kib"`
	PssAnon  int64  `json:"pss_anon_kib"`
	PssFile  int64  `json:"pss_file_kib"`
	// PeakVmRSS is the highest VmRSS sampled during churn (peak only),
	// which need not be the sample of the highest RssAnon.
	PeakVmRSS int64 `json:"peak_vm_rss_kib,omitempty"`
	Threads   int   `json:"threads"`
	// BinaryKiB is the part of RssFile that is the patu executable's own
	// pages (smaps: Rss minus Anonymous of its mappings); not read for the
	// peak, which is sampled fast.
	BinaryKiB int64   `json:"binary_file_kib,omitempty"`
	AfterSec  float64 `json:"after_s,omitempty"` // idle: since ready; after_churn: since the last pod was removed
	Samples   int     `json:"samples,omitempty"` // peak: RSS samples taken during churn
}

func newRSSPoint(when string, st procStatus, r smapsRollup) rssPoint {
	return rssPoint{When: when, VmRSS: st.VmRSS, RssAnon: st.RssAnon, RssFile: st.RssFile, RssShmem: st.RssShmem,
		Pss: r.Pss, PssAnon: r.PssAnon, PssFile: r.PssFile, Threads: st.Threads}
}

type churnInfo struct {
	Pods  int     `json:"pods"`
	Width int     `json:"width"`
	UpSec float64 `json:"create_s"`
	// AttachedSec is how long after the last pod was created the daemon
	// had a cgroup attached per pod.
	AttachedSec    float64 `json:"attached_after_s"`
	DownSec        float64 `json:"remove_s"`
	TopPods        int     `json:"pod_records_at_top"`
	TopAttachments int     `json:"cgroup_attachments_at_top"`
	// AfterAnonKiB is RssAnon every 250 ms from the last pod's removal
	// until the after_churn reading.
	AfterAnonKiB []int64 `json:"after_churn_rss_anon_kib"`
}

type idleUsage struct {
	WindowSec     float64 `json:"window_s"`
	CPUTicks      uint64  `json:"cpu_ticks"` // utime+stime, 1/100 s
	CPUMsPerSec   float64 `json:"cpu_ms_per_s"`
	RunNs         uint64  `json:"run_ns"` // sum of the threads' schedstat run time: finer than ticks
	RunMsPerSec   float64 `json:"run_ms_per_s"`
	Switches      uint64  `json:"context_switches"` // voluntary + nonvoluntary, all threads
	WakeupsPerSec float64 `json:"wakeups_per_s"`
	Threads       int     `json:"threads"`
}

// fpTiming is a set of durations in ms.
type fpTiming struct {
	Samples []float64 `json:"samples_ms"`
	P50     float64   `json:"p50_ms"`
	P90     float64   `json:"p90_ms"`
}

func newFPTiming(ms []float64) fpTiming {
	t := fpTiming{Samples: ms}
	if len(ms) > 0 {
		t.P50, t.P90 = quantile(ms, 0.5), quantile(ms, 0.9)
	}
	return t
}

// pairTimes is a duration measured with and without Patu, interleaved.
type pairTimes struct {
	Without fpTiming `json:"without_patu"`
	With    fpTiming `json:"with_patu"`
	DiffP50 float64  `json:"diff_p50_ms"` // with.p50 - without.p50
	// PairedDiffMedian is the median of (with - without) within each
	// round, less sensitive to drift.
	PairedDiffMedian float64 `json:"paired_diff_median_ms,omitempty"`
}

// cniSplit is one conflist's ADD time by plugin exec.
type cniSplit struct {
	Conflist string   `json:"conflist"`
	Bridge   fpTiming `json:"bridge"`  // bridge's exec, host-local's inside it
	Chained  fpTiming `json:"chained"` // patu's or the no-op plugin's exec
	Libcni   fpTiming `json:"libcni"`  // the rest: libcni's own work (config, cache file)
}

// execTimes is one kind of single exec.
type execTimes struct {
	What string `json:"what"`
	fpTiming
	MinorFaults float64 `json:"minor_faults_median"`
	CPUMs       float64 `json:"cpu_ms_median"` // the child's user+sys time
}

// checkValue is one figure against its target.
type checkValue struct {
	ID     string  `json:"id"`
	Label  string  `json:"label"`
	Unit   string  `json:"unit"`
	Value  float64 `json:"value"`
	Target target  `json:"target"`
	Met    bool    `json:"met"`
}

// checks evaluates every figure that has a target and was measured.
func (r *footprintReport) checks() []checkValue {
	var out []checkValue
	add := func(id, label, unit string, v float64, t target) {
		out = append(out, checkValue{ID: id, Label: label, Unit: unit, Value: v, Target: t, Met: t.met(v)})
	}
	for _, b := range r.Binaries {
		switch b.Name {
		case "patu":
			add("binary_size_patu", "patu binary", "MiB", b.MiB(), targetPatuMiB)
		case "patu-cni":
			add("binary_size_patu_cni", "patu-cni binary", "MiB", b.MiB(), targetCNIMiB)
		}
	}
	if len(r.Daemons) > 0 {
		d := r.Daemons[0]
		if p, ok := d.point("idle"); ok {
			add("daemon_anon_idle", "daemon RssAnon idle", "MiB", float64(p.RssAnon)/1024, targetAnonIdleMiB)
		}
		if p, ok := d.point("peak"); ok {
			add("daemon_anon_peak", "daemon RssAnon peak", "MiB", float64(p.RssAnon)/1024, targetAnonPeakMiB)
		}
		if d.Idle != nil {
			add("daemon_idle_cpu", "daemon idle CPU", "ms/s", d.Idle.CPUMsPerSec, targetIdleCPU)
			add("daemon_idle_wakeups", "daemon idle wake-ups", "1/s", d.Idle.WakeupsPerSec, targetIdleWakeups)
		}
	}
	if r.CNIAdd != nil {
		add("cni_add_overhead_p50", "CNI ADD overhead of patu (p50)", "ms", r.CNIAdd.DiffP50, targetCNIOverhead)
	}
	return out
}

func (r *footprintReport) check(id string) (checkValue, bool) {
	for _, c := range r.Checks {
		if c.ID == id {
			return c, true
		}
	}
	return checkValue{}, false
}

func metText(c checkValue, ok bool) string {
	switch {
	case !ok:
		return ""
	case c.Met:
		return c.Target.String() + " met"
	default:
		return c.Target.String() + " NOT MET"
	}
}

// writeFootprintTable prints the footprint section.
func writeFootprintTable(w io.Writer, r *footprintReport, m machine) {
	s := r.Settings
	fmt.Fprintf(w, "\nPatu footprint: %s, %d CPUs, kernel %s; %s; took %s\n\n", m.CPUModel, m.NProc, m.Kernel,
		r.Containerd, r.Finished.Sub(r.Started).Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tunit\tvalue\tdetail\ttarget")
	for _, b := range r.Binaries {
		if b.Name != "patu" && b.Name != "patu-cni" {
			continue
		}
		c, ok := r.check("binary_size_" + strings.ReplaceAll(b.Name, "-", "_"))
		fmt.Fprintf(tw, "%s binary\tMiB\t%.1f\t%d bytes; CGO_ENABLED=0 go build -trimpath -ldflags=-s\t%s\n", b.Name, b.MiB(), b.Bytes, metText(c, ok))
	}
	if len(r.Daemons) > 0 {
		d := r.Daemons[0]
		for _, p := range d.RSS {
			var label, more string
			switch p.When {
			case "idle":
				label = fmt.Sprintf("daemon RssAnon idle, %.0f s after ready", p.AfterSec)
			case "peak":
				label = fmt.Sprintf("daemon RssAnon peak, churn of %d pods", s.ChurnPods)
				more = fmt.Sprintf("; max of %d samples, 100 ms apart (VmRSS peak %s)", p.Samples, mibText(p.PeakVmRSS))
			case "after_churn":
				label = "daemon RssAnon after churn"
				more = fmt.Sprintf("; %.1f s after the last pod went", p.AfterSec)
			}
			c, ok := r.check("daemon_anon_" + p.When)
			fmt.Fprintf(tw, "%s\tMiB\t%.2f\t%s%s\t%s\n", label, float64(p.RssAnon)/1024, memDetail(p), more, metText(c, ok))
		}
		if u := d.Idle; u != nil {
			c, ok := r.check("daemon_idle_cpu")
			fmt.Fprintf(tw, "daemon idle CPU\tms/s\t%.2f\tutime+stime %d ticks in %.0f s; threads ran %.3f ms/s (schedstat)\t≈ 0 (%s)\n",
				u.CPUMsPerSec, u.CPUTicks, u.WindowSec, u.RunMsPerSec, metText(c, ok))
			c, ok = r.check("daemon_idle_wakeups")
			fmt.Fprintf(tw, "daemon idle wake-ups\t1/s\t%.2f\t%d context switches in %.0f s, %d threads\t≈ 0 (%s)\n",
				u.WakeupsPerSec, u.Switches, u.WindowSec, u.Threads, metText(c, ok))
		}
	}
	tw.Flush()
	if len(r.Daemons) > 1 {
		writeDaemonComparison(w, r.Daemons)
	}

	if r.PodStart != nil || r.CNIAdd != nil {
		fmt.Fprintln(w, "\nwith and without Patu, interleaved in one run: p50 [p90]")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "metric\tunit\twithout patu\twith patu\tpatu adds (p50s)\tpaired\ttarget")
		row := func(label string, p *pairTimes, tgt string) {
			if p == nil {
				return
			}
			paired := ""
			if p.PairedDiffMedian != 0 {
				paired = fmt.Sprintf("%+.1f", p.PairedDiffMedian)
			}
			fmt.Fprintf(tw, "%s\tms\t%s\t%s\t%+.1f\t%s\t%s\n", label, fpTimingText(p.Without), fpTimingText(p.With), p.DiffP50, paired, tgt)
		}
		row(fmt.Sprintf("pod start, RunPod → ready (%d each)", len(samplesOf(r.PodStart))), r.PodStart, "none set")
		c, ok := r.check("cni_add_overhead_p50")
		row(fmt.Sprintf("CNI ADD, bridge+host-local (+patu) (%d each)", len(samplesOf(r.CNIAdd))), r.CNIAdd, metText(c, ok))
		row("  same, a no-op Go plugin instead of patu", r.CNIAddNoop, "for reference")
		row("CNI DEL, bridge+host-local (+patu)", r.CNIDel, "none set")
		tw.Flush()
		fmt.Fprintln(w, "paired = median over rounds of (with - without)")
	}

	if len(r.CNIAddSplit) > 0 {
		fmt.Fprintln(w, "\nCNI ADD by plugin exec, inside the chain: p50 [p90] ms")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "conflist\tbridge (runs host-local)\tchained plugin\tlibcni itself")
		for _, c := range r.CNIAddSplit {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Conflist, fpTimingText(c.Bridge), fpTimingText(c.Chained), fpTimingText(c.Libcni))
		}
		tw.Flush()
	}

	if len(r.Exec) > 0 {
		fmt.Fprintln(w, "\nsingle exec from the benchmark (as libcni runs a plugin), the floor under a CNI ADD:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "exec\tms p50 [p90]\tminor faults\tchild CPU ms\tbinary")
		for _, e := range r.Exec {
			size := ""
			switch {
			case e.What == binEmpty:
				size = fpBinarySize(r, binEmpty)
			case strings.HasPrefix(e.What, binNoop):
				size = fpBinarySize(r, binNoop)
			case strings.HasPrefix(e.What, "patu-cni"):
				size = fpBinarySize(r, "patu-cni")
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.2f\t%s\n", e.What, fpTimingText(e.fpTiming), e.MinorFaults, e.CPUMs, size)
		}
		tw.Flush()
		if t := r.startupSummary(); t != "" {
			fmt.Fprintln(w, t)
		}
	}
	fmt.Fprintln(w, "\nRssAnon is the daemon's own memory (heap, stacks, data). RSS file pages are mostly the patu binary's text and")
	fmt.Fprintln(w, "read-only data, mapped from the file: shared page cache, dropped first under memory pressure. PSS splits shared")
	fmt.Fprintln(w, "pages among their users. BPF maps and programs are kernel memory, in none of these.")
	fmt.Fprintf(w, "Idle ≈ 0 is read as ≤ 1 ms CPU and ≤ 1 wake-up per second. Labs: containerd %s, %s and %s.\n", s.Flavor, s.Lab, s.BaselineLab)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "FAILED: footprint: %s\n", firstLine(r.Error))
	}
}

// startupSummary says what the exec table shows about CNI ADD: how much
// of patu's overhead is starting a Go binary, and the cost of a page fault
// (patu-cni against /bin/true), or "" when a number is missing.
func (r *footprintReport) startupSummary() string {
	get := func(what string) (execTimes, bool) {
		for _, e := range r.Exec {
			if e.What == what && len(e.Samples) > 0 {
				return e, true
			}
		}
		return execTimes{}, false
	}
	tru, ok1 := get("/bin/true")
	empty, ok2 := get(binEmpty)
	cni, ok3 := get("patu-cni ADD, Patu loaded")
	bare, ok4 := get("patu-cni ADD, Patu not loaded")
	if !ok1 || !ok2 || !ok3 || !ok4 || cni.MinorFaults <= tru.MinorFaults {
		return ""
	}
	t := fmt.Sprintf("patu-cni ADD takes %s ms: an empty Go program takes %s ms, registering the pod (Patu loaded or not) %s ms;\n",
		fmtMs(cni.P50), fmtMs(empty.P50), fmtMs(cni.P50-bare.P50))
	t += fmt.Sprintf("≈ %.0f µs per minor page fault beyond /bin/true's (%.0f more faults).",
		(cni.P50-tru.P50)*1000/(cni.MinorFaults-tru.MinorFaults), cni.MinorFaults-tru.MinorFaults)
	if r.CNIAddNoop != nil && r.CNIAdd != nil {
		t += fmt.Sprintf(" A chained Go plugin that does nothing adds %s ms to CNI ADD here, patu %s ms.",
			fmtMs(r.CNIAddNoop.DiffP50), fmtMs(r.CNIAdd.DiffP50))
	}
	return t
}

func samplesOf(p *pairTimes) []float64 {
	if p == nil {
		return nil
	}
	return p.With.Samples
}

func fpBinarySize(r *footprintReport, name string) string {
	for _, b := range r.Binaries {
		if b.Name == name {
			return fmt.Sprintf("%.1f MiB", b.MiB())
		}
	}
	return ""
}

func fpTimingText(t fpTiming) string {
	if len(t.Samples) == 0 {
		return "–"
	}
	return fmt.Sprintf("%s [%s]", fmtMs(t.P50), fmtMs(t.P90))
}

// fmtMs keeps about three significant digits.
func fmtMs(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func mibText(kib int64) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }

// memDetail is the rest of a reading: VmRSS and its parts, PSS and its.
func memDetail(p rssPoint) string {
	d := fmt.Sprintf("VmRSS %s = anon %s + file %s", mibText(p.VmRSS), mibText(p.RssAnon), mibText(p.RssFile))
	if p.RssShmem > 0 {
		d += " + shmem " + mibText(p.RssShmem)
	}
	if p.BinaryKiB > 0 {
		d += fmt.Sprintf(" (%s of it the patu binary)", mibText(p.BinaryKiB))
	}
	d += fmt.Sprintf("; PSS %s = anon %s + file %s; %d threads", mibText(p.Pss), mibText(p.PssAnon), mibText(p.PssFile), p.Threads)
	return d
}

// writeDaemonComparison prints the daemon figures of each build side by
// side: what a change of the daemon cost, measured in one run.
func writeDaemonComparison(w io.Writer, ds []*daemonRun) {
	fmt.Fprintln(w, "\ndaemon builds side by side (same lab, one after the other), MiB unless said:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "metric")
	for _, d := range ds {
		fmt.Fprintf(tw, "\t%s", d.Build)
	}
	fmt.Fprintln(tw)
	row := func(label string, v func(d *daemonRun) (string, bool)) {
		fmt.Fprint(tw, label)
		for _, d := range ds {
			t, ok := v(d)
			if !ok {
				t = "–"
			}
			fmt.Fprintf(tw, "\t%s", t)
		}
		fmt.Fprintln(tw)
	}
	row("binary", func(d *daemonRun) (string, bool) { return fmt.Sprintf("%.1f", d.Binary.MiB()), d.Binary.Bytes > 0 })
	for _, when := range []string{"idle", "peak", "after_churn"} {
		for _, m := range []struct {
			name string
			kib  func(rssPoint) int64
		}{
			{"RssAnon", func(p rssPoint) int64 { return p.RssAnon }},
			{"RssFile", func(p rssPoint) int64 { return p.RssFile }},
			{"VmRSS", func(p rssPoint) int64 {
				if p.PeakVmRSS > 0 {
					return p.PeakVmRSS
				}
				return p.VmRSS
			}},
			{"PSS", func(p rssPoint) int64 { return p.Pss }},
		} {
			row(m.name+" "+strings.ReplaceAll(when, "_", " "), func(d *daemonRun) (string, bool) {
				p, ok := d.point(when)
				return mibText(m.kib(p)), ok
			})
		}
	}
	row("idle CPU ms/s", func(d *daemonRun) (string, bool) {
		if d.Idle == nil {
			return "", false
		}
		return fmt.Sprintf("%.2f", d.Idle.CPUMsPerSec), true
	})
	row("idle wake-ups 1/s", func(d *daemonRun) (string, bool) {
		if d.Idle == nil {
			return "", false
		}
		return fmt.Sprintf("%.2f", d.Idle.WakeupsPerSec), true
	})
	row("start to ready s", func(d *daemonRun) (string, bool) { return fmt.Sprintf("%.2f", d.ReadySec), d.ReadySec > 0 })
	tw.Flush()
}

// smapsFileRSS sums the resident file pages of the mappings of file in a
// /proc/PID/smaps: Rss minus Anonymous (the copied-on-write pages of its
// data segment, which status counts as RssAnon).
func smapsFileRSS(data []byte, file string) (int64, error) {
	var sum int64
	in := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fs := strings.Fields(line)
		if len(fs) == 0 {
			continue
		}
		if isSmapsHeader(fs) {
			// address perms offset dev inode [path]
			in = len(fs) >= 6 && strings.Join(fs[5:], " ") == file
			continue
		}
		if !in || (fs[0] != "Rss:" && fs[0] != "Anonymous:") {
			continue
		}
		if len(fs) != 3 || fs[2] != "kB" {
			return 0, fmt.Errorf("smaps: %q: want a size in kB", line)
		}
		n, err := strconv.ParseInt(fs[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("smaps: %w", err)
		}
		if fs[0] == "Anonymous:" {
			n = -n
		}
		sum += n
	}
	return sum, sc.Err()
}

// isSmapsHeader tells a mapping's first line ("5581f6a3e000-5581f6a40000
// r--p ...") from its "Key: value" lines.
func isSmapsHeader(fs []string) bool {
	lo, hi, ok := strings.Cut(fs[0], "-")
	if !ok || len(fs) < 5 || strings.HasSuffix(fs[0], ":") {
		return false
	}
	_, err1 := strconv.ParseUint(lo, 16, 64)
	_, err2 := strconv.ParseUint(hi, 16, 64)
	return err1 == nil && err2 == nil
}

// fpFileTail returns about the last n bytes of a file, for error messages.
func fpFileTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return tail(string(data), n)
}
