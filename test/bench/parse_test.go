package main

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The files in testdata/ are real output of the tools, captured on the
// benchmark topology (see testdata/README).

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// readWant reads the expected values a sample's .want file holds, as
// "key value" lines, written by hand from the sample.
func readWant(t *testing.T, file string) map[string]float64 {
	t.Helper()
	want := map[string]float64{}
	for _, line := range strings.Split(string(readTestdata(t, strings.TrimSuffix(file, filepath.Ext(file))+".want")), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok {
			want[k] = atof(strings.TrimSpace(v))
		}
	}
	return want
}

func atof(s string) float64 {
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

func TestParseIperf3(t *testing.T) {
	for _, file := range []string{"iperf3-64k-bridge.json", "iperf3-64k-patu.json"} {
		t.Run(file, func(t *testing.T) {
			r, err := parseIperf3(readTestdata(t, file))
			if err != nil {
				t.Fatal(err)
			}
			want := readWant(t, file)
			if float64(r.BytesReceived) != want["bytes"] || !near(r.BitsPerSecond, want["bps"]) || !near(r.SecondsReceived, want["seconds"]) {
				t.Errorf("got %+v, want %v", r, want)
			}
			if float64(r.BlockSize) != want["blksize"] {
				t.Errorf("block size %d, want %v", r.BlockSize, want["blksize"])
			}
		})
	}
}

func TestParseIperf3Failures(t *testing.T) {
	for _, tc := range []struct {
		name, out, wantErr string
	}{
		// iperf3 -J exits 0 and puts the failure in "error".
		{"refused", string(readTestdata(t, "iperf3-refused.json")), "Connection refused"},
		{"not json", "iperf3: error - unable to connect", "not JSON"},
		{"no data", `{"start":{},"end":{"sum_received":{"bytes":0}}}`, "no bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseIperf3([]byte(tc.out))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseProcStat(t *testing.T) {
	a, err := parseProcStat(string(readTestdata(t, "proc-stat.txt")))
	if err != nil {
		t.Fatal(err)
	}
	want := cpuTimes{User: 17303, System: 16788, Idle: 1443212, IOWait: 1443, SoftIRQ: 1312}
	if a != want {
		t.Fatalf("got %+v, want %+v", a, want)
	}
	b := a
	b.User += 150
	b.SoftIRQ += 50
	b.Idle += 1000 // idle time is not work
	if got := b.busySecondsSince(a); !near(got, 2.0) {
		t.Errorf("busy seconds %v, want 2", got)
	}
	if _, err := parseProcStat("intr 1 2 3\n"); err == nil {
		t.Error("accepted a /proc/stat without a cpu line")
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]float64{5, 1, 3, 2}, 1)
	if s.Median != 2.5 || s.Min != 1 || s.Max != 5 || s.Failed != 1 {
		t.Errorf("got %+v", s)
	}
	if s := summarize(nil, 3); s.ok() {
		t.Errorf("no samples but ok: %+v", s)
	}
}
