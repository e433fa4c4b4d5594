package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patu-dev/patu/internal/freshns"
	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/internal/sockperf"
	"github.com/patu-dev/patu/internal/testnet"
)

// testConfig has names of its own, so the test can run beside `make demo`.
func testConfig() config {
	return config{
		Prefix: "demot",
		Subnet: netip.MustParsePrefix("10.209.2.0/24"),
		PinDir: "/sys/fs/bpf/patu-demo-test",
		Flavor: rtlab.Flavor16,
		Quick:  true,
	}
}

// TestDemo runs the demo for real with a Ctrl-C in the middle of a
// measurement; it must leave nothing behind. TestDemoFreshMachine runs it
// to the end.
func TestDemo(t *testing.T) {
	testnet.Privileged(t)
	cfg := testConfig()

	t.Run("interrupted", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// Ctrl-C while sockperf runs in the pods: the most there is to
		// clean up (daemon, pods, processes placed into them, pins).
		w := &cancelOn{marker: "$ sockperf", cancel: cancel}
		err := run(ctx, cfg, w)
		t.Logf("output:\n%s", w.String())
		if err != errInterrupted {
			t.Fatalf("interrupted run returned %v, want %v and nothing else", err, errInterrupted)
		}
		if !strings.Contains(w.String(), "Cleaned up") {
			t.Error("interrupted run did not say it cleaned up")
		}
		assertGone(t, cfg)
	})
}

// TestDemoFreshMachine runs the demo for real in its quick form, in a
// private mount namespace where nothing is mounted at /sys/fs/bpf, as on a
// new machine without systemd: the demo mounts what it needs itself, and
// leaves nothing behind.
func TestDemoFreshMachine(t *testing.T) {
	testnet.Privileged(t)
	if !freshns.Run(t) {
		return
	}
	cfg := testConfig()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := run(ctx, cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"$ crictl runp server-pod.json",
		"demo/server",                 // patu status lists the pods
		"pod to pod, past the bridge", // the transfer's counters
		"64 B   bridge", "Patu", "1 KiB  bridge",
		"Cleaned up",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	assertGone(t, cfg)
}

// assertGone checks what run's own check does not: that no process of the
// demo is left.
func assertGone(t *testing.T, cfg config) {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.ReplaceAll(string(cmdline), "\x00", " ")
		if strings.Contains(args, filepath.Join(rtlab.BaseDir, cfg.Prefix)+"/") || strings.Contains(args, cfg.PinDir) ||
			(strings.HasPrefix(args, "sockperf ") && strings.Contains(args, " 10.209.2.")) {
			t.Errorf("process %s left: %s", e.Name(), args)
		}
	}
}

// cancelOn is an output that cancels the run once marker is written.
type cancelOn struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	cancel context.CancelFunc
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytes.Contains(p, []byte(c.marker)) {
		c.cancel()
	}
	return c.buf.Write(p)
}

func (c *cancelOn) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func TestWriteTable(t *testing.T) {
	rr := func(size int, p50, p99 float64, valid int64, pkts uint64) rrRun {
		return rrRun{size: size, vethPkts: pkts, res: sockperf.Result{
			ValidRunTimeSec: 1, ValidReceived: valid,
			Percentiles: map[string]float64{"50.000": p50, "99.000": p99},
		}}
	}
	var out bytes.Buffer
	writeTable(&out, []rrRun{rr(64, 20, 100, 40000, 160000)}, []rrRun{rr(64, 15, 50, 50000, 12)})
	want := `                     p50 µs    p99 µs   round trips/s  bridge packets
   64 B   bridge       20.0     100.0          40,000         160,000
          Patu         15.0      50.0          50,000              12
          change       -25%      -50%            +25%
`
	if out.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestFormat(t *testing.T) {
	for n, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
	if got := sizeList(); got != "64 B and 1 KiB" {
		t.Errorf("sizeList() = %q", got)
	}
	if got := change(0, 5); got != "-" {
		t.Errorf("change from 0 = %q", got)
	}
}
