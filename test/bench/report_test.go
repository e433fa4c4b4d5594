package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/patu-dev/patu/internal/sockperf"
)

func TestParseCgroupUsage(t *testing.T) {
	u, err := parseCgroupUsage("usage_usec 53264807\nuser_usec 10438483\nsystem_usec 42826324\nnice_usec 0\n")
	if err != nil || u != 53264807 {
		t.Errorf("got %d, %v", u, err)
	}
	if _, err := parseCgroupUsage("user_usec 1\n"); err == nil {
		t.Error("accepted a cpu.stat without usage_usec")
	}
}

// rrSample is a successful sockperf run with the given p50.
func rrSample(round int, p path, p50 float64) sample {
	c := cell{Kind: kindRR, Size: 1024, CPU: -1}
	return sample{Round: round, Cell: c.String(), Path: p,
		RR: &sockperf.Result{Percentiles: map[string]float64{"50.000": p50, "99.000": p50 * 3}}}
}

func TestEvaluateRatioAndTarget(t *testing.T) {
	c := cell{Kind: kindRR, Size: 1024, CPU: -1}
	defs := defineMetrics([]cell{c})
	p50 := defs[0]
	if p50.target == nil || p50.target.Op != "<=" || p50.target.Value != 0.6 {
		t.Fatalf("RR 1 KiB p50 target %+v, want <= 0.6", p50.target)
	}
	samples := []sample{
		rrSample(0, pathBridge, 20), rrSample(0, pathPatu, 10), rrSample(0, pathLoopback, 15),
		rrSample(1, pathBridge, 22), rrSample(1, pathPatu, 14), rrSample(1, pathLoopback, 16),
		rrSample(2, pathBridge, 18), rrSample(2, pathPatu, 12), rrSample(2, pathLoopback, 17),
	}
	m := evaluate(p50, samples)
	if got := m.Paths[pathBridge].Median; got != 20 {
		t.Errorf("bridge median %v, want 20", got)
	}
	if m.Ratio == nil || *m.Ratio != 0.6 {
		t.Fatalf("ratio %v, want 12/20", m.Ratio)
	}
	if m.Met == nil || !*m.Met {
		t.Errorf("0.6 ≤ 0.6 not met")
	}
	if len(m.Paired) != 3 {
		t.Errorf("paired ratios %v, want one per round", m.Paired)
	}
}

// A failed tool makes its row say so: no number is made up for it.
func TestEvaluateFailedPath(t *testing.T) {
	c := cell{Kind: kindRR, Size: 1024, CPU: -1}
	failed := sample{Round: 0, Cell: c.String(), Path: pathPatu, Error: "sockperf: Can`t connect socket"}
	samples := []sample{rrSample(0, pathBridge, 20), failed, rrSample(0, pathLoopback, 15)}
	m := evaluate(defineMetrics([]cell{c})[0], samples)
	if m.Ratio != nil || m.Met != nil {
		t.Errorf("ratio %v met %v from a failed patu run", m.Ratio, m.Met)
	}
	var buf bytes.Buffer
	writeTable(&buf, report{Metrics: []metric{m}, Samples: samples})
	out := buf.String()
	for _, want := range []string{"FAILED 1/1", "UNKNOWN", "Can`t connect socket"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
