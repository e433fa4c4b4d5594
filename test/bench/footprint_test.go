package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

// statusDaemon is /proc/PID/status of a patu daemon (kernel 6.18), cut
// after the fields the footprint reads.
const statusDaemon = `Name:	patu
Umask:	0022
State:	S (sleeping)
Tgid:	15960
Pid:	15960
PPid:	15901
VmPeak:	 1240468 kB
VmSize:	 1240468 kB
VmLck:	       0 kB
VmHWM:	    9764 kB
VmRSS:	    9724 kB
RssAnon:	    2008 kB
RssFile:	    7716 kB
RssShmem:	       0 kB
VmData:	   27708 kB
Threads:	7
SigQ:	0/96364
Cpus_allowed_list:	0-1
voluntary_ctxt_switches:	5
nonvoluntary_ctxt_switches:	8
`

func TestParseSmapsRollup(t *testing.T) {
	const rollup = `55a4f0a00000-7ffd1b5fe000 ---p 00000000 00:00 0                          [rollup]
Rss:               10240 kB
Pss:                6144 kB
Pss_Dirty:          2048 kB
Pss_Anon:           2048 kB
Pss_File:           4096 kB
Pss_Shmem:             0 kB
Shared_Clean:       8192 kB
`
	got, err := parseSmapsRollup([]byte(rollup))
	if err != nil {
		t.Fatal(err)
	}
	if want := (smapsRollup{Pss: 6144, PssAnon: 2048, PssFile: 4096}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := parseSmapsRollup([]byte("Rss: 1 kB\n")); err == nil {
		t.Error("a rollup without Pss parsed")
	}
	if _, err := parseSmapsRollup([]byte("Pss: 1 MB\n")); err == nil {
		t.Error("a size not in kB parsed")
	}
}

func TestParseStatus(t *testing.T) {
	got, err := parseStatus([]byte(statusDaemon))
	if err != nil {
		t.Fatal(err)
	}
	want := procStatus{VmRSS: 9724, RssAnon: 2008, RssFile: 7716, Threads: 7, Voluntary: 5, Nonvoluntary: 8}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestParseStatusErrors(t *testing.T) {
	for name, in := range map[string]string{
		// A kernel thread has neither VmRSS nor Rss* lines.
		"no VmRSS":       "Name:\tkthreadd\nThreads:\t1\nvoluntary_ctxt_switches:\t1\nnonvoluntary_ctxt_switches:\t0\n",
		"no switches":    "VmRSS:\t 1 kB\n",
		"unit":           strings.Replace(statusDaemon, "9724 kB", "9724 MB", 1),
		"not a number":   strings.Replace(statusDaemon, "RssAnon:\t    2008", "RssAnon:\t    x", 1),
		"switches bogus": strings.Replace(statusDaemon, "voluntary_ctxt_switches:\t5", "voluntary_ctxt_switches:\t-5", 1),
	} {
		if _, err := parseStatus([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseStatCPU(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		// utime 7, stime 5 (fields 14 and 15).
		{"15960 (patu) S 15901 15960 15901 0 -1 4194560 1234 0 3 0 7 5 0 0 20 0 7 0 1826479 1270239232 2431 18446744073709551615", 12},
		// A command name with spaces and parentheses.
		{"42 (a) b (c)) R 1 42 42 0 -1 0 0 0 0 0 100 250 0 0 20 0 1 0 5 0 0 0", 350},
	} {
		got, err := parseStatCPU([]byte(tc.in))
		if err != nil || got != tc.want {
			t.Errorf("%q: got %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 a 5"} {
		if _, err := parseStatCPU([]byte(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestParseSchedstat(t *testing.T) {
	got, err := parseSchedstat([]byte("123456789 2000 31\n"))
	if err != nil || got != 123456789 {
		t.Errorf("got %d, %v", got, err)
	}
	for _, in := range []string{"", "1 2", "x 2 3"} {
		if _, err := parseSchedstat([]byte(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestTaskDelta(t *testing.T) {
	a := map[int]uint64{1: 10, 2: 5, 3: 7}
	// 1 grew by 2, 2 stayed, 3 exited (lost), 4 started with 3.
	b := map[int]uint64{1: 12, 2: 5, 4: 3}
	if got := taskDelta(a, b); got != 5 {
		t.Errorf("got %d, want 5", got)
	}
	if got := taskDelta(a, a); got != 0 {
		t.Errorf("no change: got %d", got)
	}
}

func TestQuantile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3} // unsorted on purpose
	for _, tc := range []struct{ q, want float64 }{{0, 1}, {0.5, 3}, {0.9, 4.6}, {1, 5}, {0.25, 2}} {
		if got := quantile(v, tc.q); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("q %v: got %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := quantile([]float64{1, 2, 3, 4}, 0.5); got != 2.5 {
		t.Errorf("even count: got %v", got)
	}
	if got := quantile([]float64{7}, 0.9); got != 7 {
		t.Errorf("one sample: got %v", got)
	}
	if !math.IsNaN(quantile(nil, 0.5)) {
		t.Error("empty: want NaN")
	}
	if v[0] != 5 {
		t.Error("quantile sorted its input")
	}
}

// smapsDaemon is part of a patu daemon's /proc/PID/smaps: the binary's
// text and its data (partly copied on write), then anonymous memory.
const smapsDaemon = `00400000-00b2f000 r-xp 00000000 fe:01 1311 /tmp/patu-bench-fp-1/patu
Size:               7356 kB
Rss:                5120 kB
Pss:                5120 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
00b2f000-00d9a000 r--p 0072f000 fe:01 1311 /tmp/patu-bench-fp-1/patu
Size:               2476 kB
Rss:                2200 kB
Anonymous:             0 kB
00d9a000-00dc8000 rw-p 0099a000 fe:01 1311 /tmp/patu-bench-fp-1/patu
Size:                184 kB
Rss:                 180 kB
Anonymous:            60 kB
00dc8000-00e00000 rw-p 00000000 00:00 0
Size:                224 kB
Rss:                  96 kB
Anonymous:            96 kB
c000000000-c000400000 rw-p 00000000 00:00 0 
Rss:                1024 kB
Anonymous:          1024 kB
7f0000000000-7f0000001000 r--p 00000000 fe:01 99 /tmp/patu-bench-fp-1/patu-cni
Rss:                   4 kB
Anonymous:             0 kB
`

func TestSmapsFileRSS(t *testing.T) {
	got, err := smapsFileRSS([]byte(smapsDaemon), "/tmp/patu-bench-fp-1/patu")
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(5120 + 2200 + 180 - 60); got != want {
		t.Errorf("got %d KiB, want %d", got, want)
	}
	if got, _ := smapsFileRSS([]byte(smapsDaemon), "/nope"); got != 0 {
		t.Errorf("other file: got %d", got)
	}
	bad := strings.Replace(smapsDaemon, "Rss:                5120 kB", "Rss:                5120", 1)
	if _, err := smapsFileRSS([]byte(bad), "/tmp/patu-bench-fp-1/patu"); err == nil {
		t.Error("no error for a size without unit")
	}
}

func TestIsDaemonOf(t *testing.T) {
	const pin = "/sys/fs/bpf/patu-bench-fp"
	for _, tc := range []struct {
		argv []string
		want bool
	}{
		{[]string{"/tmp/patu-bench-fp-1/patu", "--bpffs", pin, "daemon", "--ready-file", "x"}, true},
		{[]string{"/tmp/x/patu", "--bpffs", pin, "load"}, false},
		{[]string{"/tmp/x/patu", "--bpffs", pin + "2", "daemon"}, false},
		{[]string{"/usr/bin/vim", "--bpffs", pin, "daemon"}, false},
		{[]string{"patu"}, false},
	} {
		if got := isDaemonOf(tc.argv, pin); got != tc.want {
			t.Errorf("%q: got %v", tc.argv, got)
		}
	}
}

func TestFootprintSettings(t *testing.T) {
	full := footprintSettings(config{})
	if full.Idle != 30*time.Second || full.ChurnPods != 50 || full.Starts != 20 || full.CNIPairs != 50 {
		t.Errorf("defaults %+v", full)
	}
	quick := footprintSettings(config{quick: true})
	if quick.Idle >= full.Idle || quick.ChurnPods >= full.ChurnPods || quick.Starts >= full.Starts {
		t.Errorf("quick %+v is not shorter", quick)
	}
	set := footprintSettings(config{quick: true, fpIdle: 5 * time.Second, fpPods: 3, fpStarts: 2, fpCNI: 4, fpAgainst: "HEAD~1"})
	if set.Idle != 5*time.Second || set.ChurnPods != 3 || set.Starts != 2 || set.CNIPairs != 4 || set.Against != "HEAD~1" {
		t.Errorf("flags not applied: %+v", set)
	}
}

// footprintSample is a complete report, as a run fills it in.
func footprintSample() *footprintReport {
	r := &footprintReport{
		Settings:   footprintSettings(config{}).report(),
		Containerd: "containerd 1.6.20",
		Started:    time.Unix(0, 0),
		Finished:   time.Unix(150, 0),
		Binaries:   []binaryInfo{{"patu", 9 << 20}, {"patu-cni", 21 << 20}, {binEmpty, 1 << 20}, {binNoop, 2 << 20}},
		Daemons: []*daemonRun{{
			Build: "this build", Binary: binaryInfo{"patu", 9 << 20}, ReadySec: 0.4,
			RSS: []rssPoint{
				{When: "idle", VmRSS: 9724, RssAnon: 2008, RssFile: 7716, Pss: 6000, PssAnon: 2008, PssFile: 3992, Threads: 7, BinaryKiB: 7600, AfterSec: 10},
				{When: "peak", VmRSS: 16 << 10, RssAnon: 9 << 10, RssFile: 7 << 10, PeakVmRSS: 17 << 10, Threads: 8, Samples: 300},
				{When: "after_churn", VmRSS: 11 << 10, RssAnon: 3 << 10, RssFile: 8 << 10, Threads: 8, AfterSec: 7.5},
			},
			Idle: &idleUsage{WindowSec: 30, CPUTicks: 1, CPUMsPerSec: 0.33, Switches: 60, WakeupsPerSec: 2, Threads: 7},
		}},
		PodStart: &pairTimes{Without: newFPTiming([]float64{200, 220}), With: newFPTiming([]float64{210, 230}), DiffP50: 10, PairedDiffMedian: 10},
		CNIAdd:   &pairTimes{Without: newFPTiming([]float64{40, 50}), With: newFPTiming([]float64{60, 70}), DiffP50: 20, PairedDiffMedian: 20},
		Exec: []execTimes{
			{What: "/bin/true", fpTiming: newFPTiming([]float64{3, 3.2}), MinorFaults: 49, CPUMs: 2.7},
			{What: binEmpty, fpTiming: newFPTiming([]float64{6}), MinorFaults: 150, CPUMs: 6},
			{What: "patu-cni ADD, Patu loaded", fpTiming: newFPTiming([]float64{14.1}), MinorFaults: 369, CPUMs: 16},
			{What: "patu-cni ADD, Patu not loaded", fpTiming: newFPTiming([]float64{13.1}), MinorFaults: 334, CPUMs: 15},
		},
	}
	r.Checks = r.checks()
	return r
}

func TestFootprintChecks(t *testing.T) {
	r := footprintSample()
	want := map[string]bool{
		"binary_size_patu": true, "binary_size_patu_cni": false,
		"daemon_anon_idle": true, "daemon_anon_peak": false,
		"daemon_idle_cpu": true, "daemon_idle_wakeups": false,
		"cni_add_overhead_p50": false,
	}
	if len(r.Checks) != len(want) {
		t.Errorf("%d checks, want %d: %+v", len(r.Checks), len(want), r.Checks)
	}
	for id, met := range want {
		c, ok := r.check(id)
		if !ok {
			t.Errorf("no check %s", id)
			continue
		}
		if c.Met != met {
			t.Errorf("%s: met %v, want %v (value %v, target %v)", id, c.Met, met, c.Value, c.Target)
		}
	}
	// A partial report checks only what it measured.
	p := &footprintReport{Binaries: r.Binaries[:1]}
	if cs := p.checks(); len(cs) != 1 || cs[0].ID != "binary_size_patu" {
		t.Errorf("partial: %+v", cs)
	}
}

func TestWriteFootprintTable(t *testing.T) {
	r := footprintSample()
	r.Notes = []string{"a note"}
	var b bytes.Buffer
	writeFootprintTable(&b, r, machine{NProc: 2, Kernel: "6.18", CPUModel: "cpu"})
	out := b.String()
	for _, want := range []string{
		"patu binary", "≤ 25 met", "patu-cni binary", "≤ 20 NOT MET",
		"daemon RssAnon idle, 10 s after ready", "VmRSS 9.5 = anon 2.0 + file 7.5 (7.4 of it the patu binary); PSS 5.9 = anon 2.0 + file 3.9",
		"≤ 4 met", "daemon RssAnon peak, churn of 50 pods", "≤ 8 NOT MET", "(VmRSS peak 17.0)",
		"daemon idle wake-ups", "≈ 0 (≤ 1 NOT MET)",
		"pod start, RunPod → ready", "none set", "+10.0",
		"CNI ADD, bridge+host-local (+patu)", "≤ 5 NOT MET", "+20.0",
		"/bin/true", "3.10 [3.18]",
		"patu-cni ADD takes 14.1 ms: an empty Go program takes 6.00 ms, registering the pod (Patu loaded or not) 1.00 ms;",
		"≈ 34 µs per minor page fault beyond /bin/true's (320 more faults).",
		"note: a note",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FAILED") || strings.Contains(out, "side by side") {
		t.Errorf("a complete report of one build printed FAILED or a comparison:\n%s", out)
	}
	// With a second build, the two are compared.
	other := *r.Daemons[0]
	other.Build, other.Binary.Bytes = "8364930", 6<<20
	other.RSS = []rssPoint{{When: "idle", VmRSS: 9000, RssAnon: 1400, RssFile: 7600}}
	r.Daemons = append(r.Daemons, &other)
	b.Reset()
	writeFootprintTable(&b, r, machine{})
	for _, want := range []string{"daemon builds side by side", "this build", "8364930", "RssAnon idle", "1.4", "RssAnon peak"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("comparison lacks %q:\n%s", want, b.String())
		}
	}
	r.Error = "pod start: boom\nmore"
	b.Reset()
	writeFootprintTable(&b, r, machine{})
	if !strings.Contains(b.String(), "FAILED: footprint: pod start: boom\n") {
		t.Errorf("error not printed:\n%s", b.String())
	}
}
