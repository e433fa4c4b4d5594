package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/hook"
	"github.com/patu-dev/patu/internal/freshns"
	"github.com/patu-dev/patu/internal/gotool"
	"github.com/patu-dev/patu/internal/testnet"
)

// TestFirstRun runs the commands a user may type first on a machine where
// nothing has mounted bpffs, with the default pin directory, in a private
// mount namespace: each must work or say plainly that there is nothing to
// do, and load and the daemon must mount bpffs themselves.
func TestFirstRun(t *testing.T) {
	testnet.Privileged(t)
	if !freshns.Run(t) {
		return
	}
	tmp := t.TempDir()
	patu := filepath.Join(tmp, "patu")
	build := exec.Command(gotool.Path(), "build", "-o", patu, "github.com/patu-dev/patu/cmd/patu")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build patu: %v\n%s", err, out)
	}
	state := filepath.Join(tmp, "run-patu")
	// patu runs the binary as a user would: no --bpffs, the default pins.
	patuCmd := func(stdin string, args ...string) (string, string, error) {
		cmd := exec.Command(patu, args...)
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	ok := func(args ...string) string {
		t.Helper()
		out, stderr, err := patuCmd("", args...)
		if err != nil {
			t.Fatalf("patu %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
		}
		return out
	}
	mounted := func() bool {
		var st unix.Statfs_t
		return unix.Statfs(freshns.BPFFS, &st) == nil && st.Type == unix.BPF_FS_MAGIC
	}
	t.Cleanup(func() { patuCmd("", "unload") })

	// Commands that read or remove state: nothing there, said so.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"status"}, "patu is not loaded"},
		{[]string{"status", "--state-dir", state}, "start it with patu load or patu daemon"},
		{[]string{"endpoint", "list"}, "patu is not loaded: no endpoints"},
		{[]string{"unload"}, "patu is not loaded: nothing to unload"},
		{[]string{"xdp", "detach", "lo"}, "patu is not loaded: nothing attached to lo"},
	} {
		if out := ok(c.args...); !strings.Contains(out, c.want) {
			t.Errorf("patu %s = %q, want %q", strings.Join(c.args, " "), out, c.want)
		}
	}
	var st Status
	if err := json.Unmarshal([]byte(ok("status", "-o", "json")), &st); err != nil || st.Loaded || st.PinDir != bpf.DefaultPinDir {
		t.Errorf("status -o json: %+v, %v", st, err)
	}
	if out := strings.TrimSpace(ok("endpoint", "list", "-o", "json")); out != "[]" {
		t.Errorf("endpoint list -o json = %q, want []", out)
	}
	// Commands that need Patu: an error that says what to do.
	if out, stderr, err := patuCmd("", "endpoint", "add", "10.201.97.2"); err == nil || !strings.Contains(stderr, "run: patu load") {
		t.Errorf("endpoint add without Patu: %v %q %q, want a hint to run patu load", err, out, stderr)
	}

	// The OCI hook: the container runs; a stop has nothing to undo, a
	// start is counted as a container without redirect, and status says why.
	id := strings.Repeat("f", 64)
	if _, stderr, err := patuCmd(`{"id":"`+id+`","status":"stopped"}`, "hook", "--state-dir", state, "poststop"); err != nil || stderr != "" {
		t.Errorf("hook poststop: %v, stderr %q", err, stderr)
	}
	if f, err := hook.ReadFailures(state); err != nil || f.Count != 0 {
		t.Errorf("hook poststop with nothing loaded counted failures: %+v, %v", f, err)
	}
	bundle := filepath.Join(tmp, "bundle")
	os.MkdirAll(bundle, 0o755)
	os.WriteFile(filepath.Join(bundle, "config.json"), []byte(`{"linux":{"namespaces":[{"type":"network","path":"/proc/1/ns/net"}]}}`), 0o644)
	if _, _, err := patuCmd(`{"id":"`+id+`","status":"creating","pid":1,"bundle":"`+bundle+`"}`, "hook", "--state-dir", state, "createRuntime"); err != nil {
		t.Errorf("hook createRuntime: %v, want exit 0", err)
	}
	if out := ok("status", "--state-dir", state); !strings.Contains(out, "patu is not loaded") || !strings.Contains(out, "OCI hook failures: 1") {
		t.Errorf("status after a hook without Patu:\n%s", out)
	}

	// install only writes files.
	root := filepath.Join(tmp, "root")
	if out := ok("install", "--profile", "podman", "--root", root); !strings.Contains(out, root) {
		t.Errorf("install: %q", out)
	}
	if mounted() {
		t.Fatalf("a command that only reads state mounted bpffs at %s", freshns.BPFFS)
	}

	// load mounts bpffs itself.
	if out := ok("load"); !strings.Contains(out, "patu loaded") {
		t.Errorf("load: %q", out)
	}
	if !mounted() {
		t.Fatalf("load left %s without a bpffs", freshns.BPFFS)
	}
	ok("endpoint", "add", "10.201.97.2")
	if err := json.Unmarshal([]byte(ok("status", "-o", "json")), &st); err != nil || !st.Loaded || len(st.Endpoints) != 1 {
		t.Errorf("status after load: %+v, %v", st, err)
	}
	if out := ok("unload"); !strings.Contains(out, "patu unloaded") {
		t.Errorf("unload: %q", out)
	}

	// And so does the daemon, the first thing a node runs, before it
	// finds a runtime.
	if err := unix.Unmount(freshns.BPFFS, unix.MNT_DETACH); err != nil || mounted() {
		t.Fatalf("unmount bpffs again: %v", err)
	}
	logPath := filepath.Join(tmp, "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	daemon := exec.CommandContext(ctx, patu, "daemon", "--runtime-endpoint", filepath.Join(tmp, "no-runtime.sock"))
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- daemon.Wait() }()
	for {
		log, _ := os.ReadFile(logPath)
		if strings.Contains(string(log), "runtime not reachable, retrying") {
			if !strings.Contains(string(log), "patu loaded") || !mounted() {
				t.Errorf("daemon did not load before looking for the runtime:\n%s", log)
			}
			break
		}
		select {
		case err := <-done:
			t.Fatalf("daemon exited: %v\n%s", err, log)
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("daemon neither loaded nor looked for the runtime in a minute:\n%s", log)
		}
	}
	daemon.Process.Signal(syscall.SIGTERM)
	if err := <-done; err != nil && !errors.As(err, new(*exec.ExitError)) {
		t.Errorf("daemon: %v", err)
	}
}
