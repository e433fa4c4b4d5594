package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/patu-dev/patu/internal/testnet"
)

// TestCLIRoundTrip drives the commands a user types, against a pin
// directory of its own: load, attach, endpoint add/list, status, detach,
// endpoint del, unload.
func TestCLIRoundTrip(t *testing.T) {
	testnet.Privileged(t)
	pin := "/sys/fs/bpf/patu-test-cli"
	cg := testnet.Cgroup(t, "patu-test-cli")
	t.Cleanup(func() {
		runTo(context.Background(), &bytes.Buffer{}, []string{"--bpffs", pin, "unload"})
	})
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := runTo(context.Background(), &out, append([]string{"--bpffs", pin}, args...)); err != nil {
			t.Fatalf("patu %s: %v", strings.Join(args, " "), err)
		}
		return out.String()
	}

	run("load")
	run("load") // idempotent
	run("attach", cg)
	run("endpoint", "add", "10.201.98.2", "--name", "default/a")
	run("endpoint", "add", "fd00:201:98::3", "--no-redirect")
	if out := run("endpoint", "list"); !strings.Contains(out, "default/a") || !strings.Contains(out, "fd00:201:98::3") {
		t.Errorf("endpoint list:\n%s", out)
	}
	var st Status
	if err := json.Unmarshal([]byte(run("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Attachments) != 1 || st.Attachments[0].Path != cg || len(st.Endpoints) != 2 {
		t.Errorf("status = %+v", st)
	}
	if !strings.Contains(run("status"), "redirected") {
		t.Error("status table lacks traffic counters")
	}
	run("detach", cg)
	run("endpoint", "del", "10.201.98.2")
	var out bytes.Buffer
	if err := runTo(context.Background(), &out, []string{"--bpffs", pin, "endpoint", "del", "10.201.98.2"}); err == nil {
		t.Error("deleting an unknown endpoint succeeded")
	}
	run("unload")
	// Not loaded is a state to report, with the way out.
	if got := run("status"); !strings.Contains(got, "patu is not loaded") || !strings.Contains(got, "patu load") {
		t.Errorf("status after unload: %q, want a hint to run patu load", got)
	}
	st = Status{Loaded: true}
	if err := json.Unmarshal([]byte(run("status", "-o", "json")), &st); err != nil || st.Loaded || st.PinDir != pin {
		t.Errorf("status -o json after unload: %+v, %v", st, err)
	}
	if got := run("unload"); !strings.Contains(got, "nothing to unload") {
		t.Errorf("unload twice: %q", got)
	}
	if got := run("endpoint", "list"); !strings.Contains(got, "patu is not loaded") {
		t.Errorf("endpoint list after unload: %q", got)
	}
	if err := runTo(context.Background(), &out, []string{"--bpffs", pin, "endpoint", "add", "10.201.98.2"}); err == nil || !strings.Contains(err.Error(), "patu load") {
		t.Errorf("endpoint add after unload: %v, want a hint to run patu load", err)
	}
}
