package sockperf

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The files in testdata/ are real output of sockperf (see testdata/README).

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestParse(t *testing.T) {
	for _, file := range []string{"sockperf-pp-1k-bridge.txt", "sockperf-pp-1k-patu.txt"} {
		t.Run(file, func(t *testing.T) {
			r, err := Parse(readTestdata(t, file))
			if err != nil {
				t.Fatal(err)
			}
			want := readWant(t, file)
			if !near(r.P50(), want["p50"]) || !near(r.P99(), want["p99"]) {
				t.Errorf("p50 %v p99 %v, want %v %v", r.P50(), r.P99(), want["p50"], want["p99"])
			}
			if !near(r.AvgRTT, want["avg"]) || float64(r.Received) != want["received"] || float64(r.ValidReceived) != want["valid"] {
				t.Errorf("avg %v received %d valid %d, want %v", r.AvgRTT, r.Received, r.ValidReceived, want)
			}
			if !near(r.RunTimeSec, want["runtime"]) || !near(r.MinRTT, want["min"]) || !near(r.MaxRTT, want["max"]) {
				t.Errorf("runtime %v min %v max %v, want %v", r.RunTimeSec, r.MinRTT, r.MaxRTT, want)
			}
			if r.Observations != r.ValidReceived {
				t.Errorf("observations %d != valid received %d", r.Observations, r.ValidReceived)
			}
		})
	}
}

func TestTxPerSec(t *testing.T) {
	// sockperf-pp-1k-patu.txt: 56081 round trips in the valid 1.550 s.
	r, err := Parse(readTestdata(t, "sockperf-pp-1k-patu.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.TxPerSec(), 56081/1.550; !near(got, want) {
		t.Errorf("TxPerSec %v, want %v", got, want)
	}
	if got := (Result{}).TxPerSec(); got != 0 {
		t.Errorf("TxPerSec of an empty result %v, want 0", got)
	}
}

// readWant reads the expected values a sample's .want file holds, as
// "key value" lines, written by hand from the sample.
func readWant(t *testing.T, file string) map[string]float64 {
	t.Helper()
	want := map[string]float64{}
	for _, line := range strings.Split(readTestdata(t, strings.TrimSuffix(file, filepath.Ext(file))+".want"), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok {
			want[k] = atof(strings.TrimSpace(v))
		}
	}
	return want
}

func TestParseFailures(t *testing.T) {
	bridge, patu := readTestdata(t, "sockperf-pp-1k-bridge.txt"), readTestdata(t, "sockperf-pp-1k-patu.txt")
	for _, tc := range []struct {
		name, out, wantErr string
	}{
		// sockperf exits 0 when it cannot connect.
		{"refused", readTestdata(t, "sockperf-refused.txt"), "Connection refused"},
		{"empty", "", "no round-trip statistics"},
		{"one-way latency", strings.ReplaceAll(bridge, "avg-rtt", "avg-latency"), "--full-rtt"},
		{"truncated", firstLines(bridge, 9), "no round-trip statistics"},
		{"reordered", strings.Replace(patu, "# out-of-order messages = 0", "# out-of-order messages = 3", 1), "out-of-order"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.out)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "")
}
