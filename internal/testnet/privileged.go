package testnet

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/patu-dev/patu/cgroup"
)

// Privileged marks a test that needs root (network namespaces, veths,
// cgroup v2, BPF). It skips the test when the environment variable
// PATU_SKIP_PRIVILEGED is 1, and fails it with a message saying so when the
// test does not run as root: a privileged test silently skipped is a test
// that never runs.
func Privileged(tb testing.TB) {
	tb.Helper()
	if os.Getenv("PATU_SKIP_PRIVILEGED") == "1" {
		tb.Skip("PATU_SKIP_PRIVILEGED=1: privileged test skipped")
	}
	if os.Geteuid() != 0 {
		tb.Fatal("this test needs root (network namespaces, cgroup v2, BPF): " +
			"run it as root, or set PATU_SKIP_PRIVILEGED=1 to skip privileged tests")
	}
}

// Cgroup creates the cgroup v2 directory name under the cgroup2 mount for
// one test, removing a leftover of a crashed run first and the directory
// (with any process still in it moved out) when the test ends.
func Cgroup(tb testing.TB, name string) string {
	tb.Helper()
	mnt, err := cgroup.Mount2()
	if err != nil {
		tb.Fatal(err)
	}
	dir := filepath.Join(mnt, name)
	cgroup.Remove(dir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cgroup.Remove(dir) })
	return dir
}
