package testnet

import (
	"os"
	"testing"
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
