package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeLog(t *testing.T, dir, name, status string, events ...string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name+".json"), []byte(strings.Join(events, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".exit"), []byte(status+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLine: top-level tests count once, subtests' skips give reasons, a
// failure is named and makes the run fail, a binary that stopped mid-way
// counts as a failure.
func TestLine(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, "a", "0",
		`{"Action":"run","Test":"TestA"}`,
		`{"Action":"output","Test":"TestA/socket","Output":"    harness_test.go:130: the socket path is off on this kernel: no tracepoint\n"}`,
		`{"Action":"skip","Test":"TestA/socket"}`,
		`{"Action":"pass","Test":"TestA"}`,
		`{"Action":"output","Test":"TestB","Output":"    load_test.go:42: cgroups serve the socket path\n"}`,
		`{"Action":"skip","Test":"TestB"}`,
		`{"Action":"pass"}`)
	var out bytes.Buffer
	if err := run(&out, "6.1.0-57-amd64", "QEMU", []string{dir}); err != nil {
		t.Fatal(err)
	}
	want := "kernel 6.1.0-57-amd64: 1 passed, 0 failed, 1 skipped (skipped TestB: cgroups serve the socket path; skipped TestA/socket: the socket path is off on this kernel: no tracepoint) [QEMU]\n"
	if out.String() != want {
		t.Errorf("got  %q\nwant %q", out.String(), want)
	}

	writeLog(t, dir, "b", "2",
		`{"Action":"fail","Test":"TestC"}`,
		`{"Action":"pass","Test":"TestD"}`)
	out.Reset()
	err := run(&out, "k", "w", []string{dir})
	if !errors.Is(err, errFailed) {
		t.Errorf("run = %v, want errFailed", err)
	}
	if !strings.Contains(out.String(), "2 passed, 2 failed, 1 skipped") || !strings.Contains(out.String(), "failed: TestC, b did not finish (exit 2)") {
		t.Errorf("got %q", out.String())
	}
}

func TestNoLogs(t *testing.T) {
	var out bytes.Buffer
	if err := run(&out, "k", "w", []string{t.TempDir()}); !errors.Is(err, errFailed) || !strings.Contains(out.String(), "no test ran") {
		t.Errorf("run = %v, %q", err, out.String())
	}
}
