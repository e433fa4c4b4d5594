package apps

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patu-dev/patu/internal/apps"
	"github.com/patu-dev/patu/internal/testnet"
)

// scale divides the cases' full sizes (those of the benchmark).
func scale(t *testing.T) int {
	v := os.Getenv("PATU_APPS_SCALE")
	if v == "" {
		return 2
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("PATU_APPS_SCALE=%q: want a whole number ≥ 1", v)
	}
	return n
}

func runner(t *testing.T, prefix string, subnet int, sc int) *apps.Runner {
	t.Helper()
	testnet.Privileged(t)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, err := apps.NewRunner(context.Background(), apps.Config{
		Prefix:  prefix,
		Subnet4: netip.MustParsePrefix(fmt.Sprintf("10.210.%d.0/24", subnet)),
		Subnet6: netip.MustParsePrefix(fmt.Sprintf("fd00:210::%x:0/112", subnet)),
		Scale:   sc,
		Log:     log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// TestApps runs every case on every path and checks each run on its own
// (no error, no hang, conntrack clean, nothing outlives a pod) and each
// Patu run against the bridge path's (same result, accelerated).
func TestApps(t *testing.T) {
	paths, err := apps.PathsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	r := runner(t, "apt", 1, scale(t))
	cases := r.Cases()
	if miss := apps.Missing(cases); len(miss) > 0 {
		t.Fatalf("programs missing: %s (install them with hack/apps-deps.sh, or make test-deps)", strings.Join(miss, ", "))
	}
	var table []string
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			var bridge apps.Outcome
			for _, p := range paths {
				o := r.Run(context.Background(), c, p)
				table = append(table, row(o))
				for _, e := range o.Errors {
					t.Errorf("%s: %s", p, e)
				}
				if p == apps.Bridge {
					bridge = o
					continue
				}
				for _, e := range apps.Compare(bridge, o) {
					t.Errorf("%s against the bridge path: %s", p, e)
				}
			}
		})
	}
	t.Logf("results (scale 1/%d):\n%-18s %-12s %-6s %9s %9s %9s %7s  %s\n%s", scale(t),
		"case", "path", "result", "MB/s", "kcpu s", "bridge MB", "patu %", "observed", strings.Join(table, "\n"))
}

func row(o apps.Outcome) string {
	res := "ok"
	if o.Hang {
		res = "HANG"
	} else if o.Failed() {
		res = "FAIL"
	}
	return fmt.Sprintf("%-18s %-12s %-6s %9.0f %9.2f %9.1f %7.1f  %s", o.Case, o.Path, res, o.MBps(), o.Stats.KernelCPU,
		float64(o.Stats.VethTx)/1e6, 100*o.Stats.PatuShare(), o.Observed.Digest)
}

// TestSelfTest shows that the suite's checks fail when they should: a
// connection left open, a namespace kept alive by a socket after its pod
// was deleted, applications that never finish. Each on the bridge path
// and on Patu's, the two paths side by side (each its own runner, names
// and subnet): the cases mostly wait out the checks' deadlines.
func TestSelfTest(t *testing.T) {
	want := map[string]string{
		"selftest-open-flow":      "open flow:",
		"selftest-outlived-netns": "outlived netns:",
		"selftest-hang":           "hang:",
	}
	for i, p := range []apps.Path{apps.Bridge, apps.Patu} {
		t.Run(string(p), func(t *testing.T) {
			t.Parallel()
			r := runner(t, fmt.Sprintf("aps%d", i), 2+i, 1)
			for _, c := range r.SelfTestCases() {
				t.Run(c.Name, func(t *testing.T) {
					start := time.Now()
					o := r.Run(context.Background(), c, p)
					found := false
					for _, e := range o.Errors {
						found = found || strings.HasPrefix(e, want[c.Name])
					}
					if !found {
						t.Errorf("the %q check did not fail; the run's errors: %q", want[c.Name], o.Errors)
					}
					if c.Name == "selftest-hang" && !o.Hang {
						t.Errorf("not reported as a hang")
					}
					t.Logf("failed as it should in %s: %q", time.Since(start).Round(100*time.Millisecond), o.Errors)
				})
			}
		})
	}
}
