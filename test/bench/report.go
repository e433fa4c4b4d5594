package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// target is a bound on the patu÷bridge ratio of a metric.
type target struct {
	Op    string  `json:"op"` // "<=" or ">="
	Value float64 `json:"value"`
}

func (t target) String() string {
	op := map[string]string{"<=": "≤", ">=": "≥"}[t.Op]
	return fmt.Sprintf("%s %.2g", op, t.Value)
}

func (t target) met(ratio float64) bool {
	if t.Op == "<=" {
		return ratio <= t.Value
	}
	return ratio >= t.Value
}

// metricDef says how to read one metric out of the samples of one cell.
type metricDef struct {
	id       string
	label    string
	unit     string
	cell     cell
	decimals int
	value    func(sample) (float64, bool)
	target   *target
	// paths it exists on (all when empty).
	paths []path
}

// metric is a metricDef evaluated over all runs: what the table and the
// JSON show.
type metric struct {
	ID     string           `json:"id"`
	Label  string           `json:"label"`
	Unit   string           `json:"unit"`
	Cell   string           `json:"cell"`
	Paths  map[path]summary `json:"paths"`
	Ratio  *float64         `json:"patu_bridge_ratio,omitempty"` // of medians
	Paired []float64        `json:"paired_ratios,omitempty"`     // patu÷bridge within each round
	// SocketRatio is socket÷bridge (the opt-in socket path), BigTCPRatio
	// bigtcp÷bridge (the packet path with BIG TCP).
	SocketRatio *float64 `json:"socket_bridge_ratio,omitempty"`
	BigTCPRatio *float64 `json:"bigtcp_bridge_ratio,omitempty"`
	Target      *target  `json:"target,omitempty"`
	Met         *bool    `json:"met,omitempty"` // nil when a path failed
	dec         int
	failed      map[path][]string
}

func defineMetrics(cells []cell) []metricDef {
	var defs []metricDef
	for _, c := range cells {
		c := c
		where := fmt.Sprintf("%s, %s%s", sizeName(c.Size), placementLabel(c), c.Via.suffix())
		sfx := ""
		if c.Via != viaPod {
			sfx = "_" + string(c.Via)
		}
		// A Service whose backend is on another node is not Patu's to
		// speed up: it must cost nothing measurable there (10%: the noise
		// of a shared machine).
		tgt := func(op string, v float64) *target {
			if c.Via == viaRemote {
				return &target{op, map[string]float64{"<=": 1.1, ">=": 0.9}[op]}
			}
			return &target{op, v}
		}
		switch c.Kind {
		case kindRR:
			id := fmt.Sprintf("rr_%d_%s%s", c.Size, c.placement(), sfx)
			var p50Target *target
			if c.Size == 1024 || c.Via == viaRemote {
				p50Target = tgt("<=", 0.6)
			}
			defs = append(defs,
				metricDef{id: id + "_p50", label: "RR p50 " + where, unit: "µs", cell: c, decimals: 1, target: p50Target,
					value: ifRR(func(s sample) float64 { return s.RR.P50() })},
				metricDef{id: id + "_p99", label: "RR p99 " + where, unit: "µs", cell: c, decimals: 1,
					value: ifRR(func(s sample) float64 { return s.RR.P99() })},
			)
			if c.Size == 64 {
				defs = append(defs,
					metricDef{id: id + "_cpu_per_1k_tx", label: "CPU per 1k tx " + where, unit: "CPU-ms",
						cell: c, decimals: 2, target: tgt("<=", 0.5),
						value: ifRR(func(s sample) float64 { return s.CPUPer1kTx * 1000 })},
					metricDef{id: id + "_pods_cpu_per_1k_tx", label: "  same, pod cgroups only", unit: "CPU-ms",
						cell: c, decimals: 2,
						value: ifRR(func(s sample) float64 { return s.PodsCPUPer1kTx * 1000 })})
			}
		case kindVerify:
			id := fmt.Sprintf("verify_%d_%d%s", c.Size, c.Rate, sfx)
			defs = append(defs,
				metricDef{id: id + "_gbps", label: "Throughput " + where, unit: "Gbit/s", cell: c, decimals: 2,
					value: ifVerify(func(s sample) float64 { return s.Verify.Gbps })},
				metricDef{id: id + "_kernel_cpu_per_gb", label: "Kernel CPU per GB " + where, unit: "CPU-s", cell: c, decimals: 3,
					target: tgt("<=", 0.6),
					value:  ifVerify(func(s sample) float64 { return s.KernelCPUPerGB })},
				metricDef{id: id + "_cpu_per_gb", label: "  CPU per GB, user too", unit: "CPU-s", cell: c, decimals: 3,
					value: ifVerify(func(s sample) float64 { return s.CPUPerGB })},
			)
		case kindBulk:
			id := fmt.Sprintf("bulk_%d%s", c.Size, sfx)
			defs = append(defs,
				metricDef{id: id + "_gbps", label: "Throughput " + where, unit: "Gbit/s", cell: c, decimals: 2,
					target: tgt(">=", 1.0),
					value:  ifBulk(func(s sample) float64 { return s.Bulk.Gbps() })},
				metricDef{id: id + "_cpu_per_gb", label: "CPU per GB " + where, unit: "CPU-s", cell: c, decimals: 3,
					target: tgt("<=", 0.8),
					value:  ifBulk(func(s sample) float64 { return s.CPUPerGB })},
				metricDef{id: id + "_pods_cpu_per_gb", label: "  same, pod cgroups only", unit: "CPU-s", cell: c, decimals: 3,
					value: ifBulk(func(s sample) float64 { return s.PodsCPUPerGB })},
			)
		}
	}
	return defs
}

// proofMetrics are the per-run evidence that the patu runs were redirected
// and the bridge runs were not.
func proofMetrics(cells []cell) []metricDef {
	var defs []metricDef
	for _, c := range cells {
		c := c
		id := strings.ReplaceAll(strings.ReplaceAll(c.String(), " ", "_"), "_KiB", "k")
		defs = append(defs,
			metricDef{id: id + "_veth_packets", label: c.String(), unit: "veth pkts", cell: c,
				value: func(s sample) (float64, bool) { return float64(s.Veth), true }},
			metricDef{id: id + "_cpus_outside_pods", label: c.String(), unit: "CPUs busy outside the pods", cell: c,
				value: func(s sample) (float64, bool) {
					if s.WindowSec <= 0 {
						return 0, false
					}
					return (s.CPUSec - s.PodsCPUSec) / s.WindowSec, true
				}},
			metricDef{id: id + "_local_bytes", label: c.String(), unit: "packet path bytes", cell: c, paths: []path{pathPatu, pathBigTCP, pathSocket},
				value: ifPatu(func(s sample) float64 { return float64(s.Patu.LocalBytes) })},
			metricDef{id: id + "_redirect_msgs", label: c.String(), unit: "redirected msgs", cell: c, paths: []path{pathPatu, pathSocket},
				value: ifPatu(func(s sample) float64 { return float64(s.Patu.RedirectMsgs) })},
			metricDef{id: id + "_redirect_bytes", label: c.String(), unit: "redirected bytes", cell: c, paths: []path{pathPatu, pathSocket},
				value: ifPatu(func(s sample) float64 { return float64(s.Patu.RedirectBytes) })},
			metricDef{id: id + "_fallback_msgs", label: c.String(), unit: "msgs over TCP", cell: c, paths: []path{pathPatu, pathSocket},
				value: ifPatu(func(s sample) float64 { return float64(s.Patu.FallbackMsgs) })},
		)
	}
	return defs
}

// ifRR, ifBulk and ifPatu guard a metric's value against a sample that
// lacks the part it reads.
func ifRR(f func(sample) float64) func(sample) (float64, bool) {
	return func(s sample) (float64, bool) {
		if s.RR == nil {
			return 0, false
		}
		return f(s), true
	}
}

func ifBulk(f func(sample) float64) func(sample) (float64, bool) {
	return func(s sample) (float64, bool) {
		if s.Bulk == nil {
			return 0, false
		}
		return f(s), true
	}
}

func ifVerify(f func(sample) float64) func(sample) (float64, bool) {
	return func(s sample) (float64, bool) {
		if s.Verify == nil {
			return 0, false
		}
		return f(s), true
	}
}

func ifPatu(f func(sample) float64) func(sample) (float64, bool) {
	return func(s sample) (float64, bool) {
		if s.Patu == nil {
			return 0, false
		}
		return f(s), true
	}
}

func placementLabel(c cell) string {
	if c.Kind == kindVerify {
		if c.Rate > 0 {
			return fmt.Sprintf("verifying reader capped at %d MB/s", c.Rate)
		}
		return "verifying reader"
	}
	if c.Kind != kindRR {
		return "1 stream"
	}
	if c.CPU < 0 {
		return "scheduler"
	}
	return fmt.Sprintf("both on CPU %d", c.CPU)
}

// evaluate computes a metric over all samples.
func evaluate(d metricDef, samples []sample) metric {
	m := metric{ID: d.id, Label: d.label, Unit: d.unit, Cell: d.cell.String(), Target: d.target, dec: d.decimals,
		Paths: map[path]summary{}, failed: map[path][]string{}}
	paths := d.paths
	if len(paths) == 0 {
		paths = allPaths
	}
	byRound := map[path]map[int]float64{}
	for _, p := range paths {
		var vals []float64
		failed := 0
		byRound[p] = map[int]float64{}
		for _, s := range samples {
			if s.Cell != m.Cell || s.Path != p {
				continue
			}
			if !s.ok() {
				failed++
				m.failed[p] = append(m.failed[p], s.Error)
				continue
			}
			v, ok := d.value(s)
			if !ok {
				failed++
				continue
			}
			vals = append(vals, v)
			byRound[p][s.Round] = v
		}
		m.Paths[p] = summarize(vals, failed)
	}
	b, pt := m.Paths[pathBridge], m.Paths[pathPatu]
	if b.ok() && pt.ok() && b.Median != 0 {
		r := pt.Median / b.Median
		m.Ratio = &r
		for round, bv := range byRound[pathBridge] {
			if pv, ok := byRound[pathPatu][round]; ok && bv != 0 {
				m.Paired = append(m.Paired, pv/bv)
			}
		}
		if d.target != nil {
			met := d.target.met(r)
			m.Met = &met
		}
	}
	if so := m.Paths[pathSocket]; b.ok() && so.ok() && b.Median != 0 {
		r := so.Median / b.Median
		m.SocketRatio = &r
	}
	if bt := m.Paths[pathBigTCP]; b.ok() && bt.ok() && b.Median != 0 {
		r := bt.Median / b.Median
		m.BigTCPRatio = &r
	}
	return m
}

// report is everything written to the JSON file.
type report struct {
	Machine  machine        `json:"machine"`
	Config   map[string]any `json:"config"`
	Started  time.Time      `json:"started"`
	Finished time.Time      `json:"finished"`
	Metrics  []metric       `json:"metrics"`
	Proof    []metric       `json:"redirect_proof"`
	Samples  []sample       `json:"samples"`
	Notes    []string       `json:"notes,omitempty"`
	// Footprint is the footprint section (footprint*.go), when it ran.
	Footprint *footprintReport `json:"footprint,omitempty"`
}

func fmtNum(v float64, dec int) string {
	if math.Abs(v) >= 1e6 {
		return fmt.Sprintf("%.3gM", v/1e6)
	}
	return fmt.Sprintf("%.*f", dec, v)
}

// cellText is "median (min–max)", or why there is no number.
func cellText(s summary, dec int) string {
	switch {
	case !s.ok() && s.Failed == 0:
		return "–"
	case !s.ok():
		return fmt.Sprintf("FAILED %d/%d", s.Failed, s.Failed)
	}
	t := fmtNum(s.Median, dec)
	if len(s.Samples) > 1 {
		t += fmt.Sprintf(" (%s–%s)", fmtNum(s.Min, dec), fmtNum(s.Max, dec))
	}
	if s.Failed > 0 {
		t += fmt.Sprintf(" [%d of %d failed]", s.Failed, s.Failed+len(s.Samples))
	}
	return t
}

func optRatio(r *float64) string {
	if r == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", *r)
}

func ratioText(m metric) string {
	if m.Ratio == nil {
		return "n/a"
	}
	t := fmt.Sprintf("%.2f", *m.Ratio)
	if len(m.Paired) > 1 {
		t += fmt.Sprintf(" [%.2f–%.2f]", minOf(m.Paired), maxOf(m.Paired))
	}
	return t
}

func targetText(m metric) string {
	switch {
	case m.Target == nil:
		return ""
	case m.Met == nil:
		return m.Target.String() + " UNKNOWN (a path failed)"
	case *m.Met:
		return m.Target.String() + " met"
	default:
		return m.Target.String() + " NOT MET"
	}
}

// writeTable prints the comparison and the redirect proof.
func writeTable(w io.Writer, rep report) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tunit\tbridge\tpatu\tbigtcp\tsocket\tloopback\tpatu÷bridge\tbigtcp÷b\tsocket÷b\ttarget (patu)")
	for _, m := range rep.Metrics {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Label, m.Unit,
			cellText(m.Paths[pathBridge], m.dec), cellText(m.Paths[pathPatu], m.dec), cellText(m.Paths[pathBigTCP], m.dec),
			cellText(m.Paths[pathSocket], m.dec), cellText(m.Paths[pathLoopback], m.dec), ratioText(m),
			optRatio(m.BigTCPRatio), optRatio(m.SocketRatio), targetText(m))
	}
	tw.Flush()
	fmt.Fprintln(w, "medians over runs (min–max); patu÷bridge is the ratio of medians [min–max of the per-round ratios].")
	fmt.Fprintln(w, "patu is Patu's default, the packet path; bigtcp the same with BIG TCP (patu load --big-tcp 196608);")
	fmt.Fprintln(w, "socket the opt-in socket path (both pods annotated).")

	fmt.Fprintln(w, "\nredirect proof (medians per run; bridge pkts = packets the bridge handed the pods by their veths):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "cell\tbridge pkts b/p/s/l\tpatu: packet path\tsocket: packet path\tsocket: redirected\tsocket: msgs over TCP\tCPUs busy outside pods b/p/s/l")
	byCell := map[string]map[string]metric{}
	var order []string
	for _, m := range rep.Proof {
		if byCell[m.Cell] == nil {
			byCell[m.Cell] = map[string]metric{}
			order = append(order, m.Cell)
		}
		byCell[m.Cell][m.Unit] = m
	}
	for _, c := range order {
		ms := byCell[c]
		v := ms["veth pkts"]
		o := ms["CPUs busy outside the pods"]
		fmt.Fprintf(tw, "%s\t%s/%s/%s/%s\t%s\t%s\t%s\t%s\t%s/%s/%s/%s\n", c,
			medianText(v.Paths[pathBridge], 0), medianText(v.Paths[pathPatu], 0), medianText(v.Paths[pathSocket], 0), medianText(v.Paths[pathLoopback], 0),
			bytesText(ms["packet path bytes"].Paths[pathPatu]),
			bytesText(ms["packet path bytes"].Paths[pathSocket]),
			bytesText(ms["redirected bytes"].Paths[pathSocket]),
			medianText(ms["msgs over TCP"].Paths[pathSocket], 0),
			medianText(o.Paths[pathBridge], 2), medianText(o.Paths[pathPatu], 2), medianText(o.Paths[pathSocket], 2), medianText(o.Paths[pathLoopback], 2))
	}
	tw.Flush()
	fmt.Fprintln(w, "bridge and loopback runs have Patu unloaded: nothing can be redirected there. CPUs busy outside the pods:")
	fmt.Fprintln(w, "kernel threads, this harness and anyone else on the machine; high or uneven values mean the CPU rows are noisy")
	fmt.Fprintln(w, "(slightly negative is normal: /proc/stat samples ticks, cgroups count exact time).")

	// Say which runs failed and why, once per distinct reason.
	seen := map[string]bool{}
	for _, s := range rep.Samples {
		if s.ok() {
			continue
		}
		key := s.Cell + "/" + string(s.Path) + ": " + s.Error
		if !seen[key] {
			seen[key] = true
			fmt.Fprintf(w, "FAILED run %d %s on %s: %s\n", s.Round, s.Cell, s.Path, firstLine(s.Error))
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func bytesText(s summary) string {
	if !s.ok() {
		return medianText(s, 0)
	}
	return fmt.Sprintf("%.1f MB", s.Median/1e6)
}

// medianText is the median alone, for the narrower proof table.
func medianText(s summary, dec int) string {
	if !s.ok() {
		if s.Failed > 0 {
			return "FAILED"
		}
		return "–"
	}
	return fmtNum(s.Median, dec)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func minOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = math.Min(m, x)
	}
	return m
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = math.Max(m, x)
	}
	return m
}
