package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patu-dev/patu/hook"
	"github.com/patu-dev/patu/internal/testnet"
)

func TestHookRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  string
		usage bool
	}{
		{"no stage", nil, `{"id":"x"}`, "takes one STAGE", true},
		{"two stages", []string{"createRuntime", "poststop"}, `{"id":"x"}`, "takes one STAGE", true},
		{"unknown stage", []string{"startContainer"}, `{"id":"x"}`, `unknown stage "startContainer"`, false},
		{"malformed state", []string{"poststop"}, `{"id":`, "not an OCI state", false},
		{"no state", []string{"poststop"}, ``, "no state on stdin", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			var stderr bytes.Buffer
			err := cmdHook(strings.NewReader(tc.stdin), &bytes.Buffer{}, &stderr, t.TempDir(),
				append([]string{"--state-dir", state}, tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
			var u usageError
			if errors.As(err, &u) != tc.usage {
				t.Errorf("usage error: %v, want %v", errors.As(err, &u), tc.usage)
			}
			if f, _ := hook.ReadFailures(state); f.Count != 0 {
				t.Errorf("bad input counted as a failure inside Patu")
			}
		})
	}
}

// A failure inside Patu is logged and counted, and the hook succeeds: the
// container must start.
func TestHookFailureInsidePatuExitsZero(t *testing.T) {
	var logged []string
	defer func(f func(string)) { hookSyslog = f }(hookSyslog)
	hookSyslog = func(msg string) { logged = append(logged, msg) }
	state := filepath.Join(t.TempDir(), "run")
	bundle := t.TempDir()
	config := `{"linux":{"namespaces":[{"type":"network","path":"/run/netns/patu-no-such-netns"}]}}`
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		stage, stdin, want string
	}{
		// The pin directory is not on a bpffs.
		{"poststop", `{"id":"` + strings.Repeat("c", 64) + `","status":"stopped"}`, "not on a bpffs"},
		// The netns cannot be read.
		{"createRuntime", `{"id":"abc","status":"creating","pid":1,"bundle":"` + bundle + `"}`, "patu-no-such-netns"},
	} {
		var stderr bytes.Buffer
		err := cmdHook(strings.NewReader(tc.stdin), &bytes.Buffer{}, &stderr, t.TempDir(), []string{"--state-dir", state, tc.stage})
		if err != nil {
			t.Fatalf("%s: %v, want success", tc.stage, err)
		}
		if !strings.Contains(stderr.String(), tc.want) || !strings.Contains(stderr.String(), "stage="+tc.stage) {
			t.Errorf("%s: stderr %q does not say what failed", tc.stage, stderr.String())
		}
		f, err := hook.ReadFailures(state)
		if err != nil || f.Count != uint64(i+1) {
			t.Fatalf("%s: failures %+v, %v; want %d", tc.stage, f, err, i+1)
		}
		if last := f.Recent[len(f.Recent)-1]; string(last.Stage) != tc.stage || !strings.Contains(last.Error, tc.want) {
			t.Errorf("%s: last failure %+v", tc.stage, last)
		}
	}
	if len(logged) != 2 || !strings.Contains(logged[0], "not on a bpffs") {
		t.Errorf("syslog got %q", logged)
	}
	var out bytes.Buffer
	if err := cmdHook(nil, &out, &bytes.Buffer{}, "", []string{"-h"}); err != nil || !strings.Contains(out.String(), "createRuntime") {
		t.Errorf("hook -h: %v\n%s", err, out.String())
	}
}

// patu status shows the failures patu hook counted: after the tables when
// Patu is loaded, in the error when it is not.
func TestStatusShowsHookFailures(t *testing.T) {
	state := t.TempDir()
	if _, err := hook.CountFailure(state, hook.Failure{Stage: hook.CreateRuntime, Container: strings.Repeat("e", 64), Error: "patu is not loaded"}); err != nil {
		t.Fatal(err)
	}
	err := cmdStatus(&bytes.Buffer{}, t.TempDir(), []string{"--state-dir", state})
	if err == nil || !strings.Contains(err.Error(), "OCI hook failures: 1") || !strings.Contains(err.Error(), "createRuntime eeeeeeeeeeee: patu is not loaded") {
		t.Errorf("status without Patu: %v", err)
	}

	testnet.Privileged(t)
	pin := "/sys/fs/bpf/patu-test-cli-hook"
	t.Cleanup(func() { runTo(context.Background(), &bytes.Buffer{}, []string{"--bpffs", pin, "unload"}) })
	if err := runTo(context.Background(), &bytes.Buffer{}, []string{"--bpffs", pin, "load"}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cmdStatus(&out, pin, []string{"--state-dir", state}); err != nil || !strings.Contains(out.String(), "OCI hook failures: 1") {
		t.Errorf("status: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := cmdStatus(&out, pin, []string{"--state-dir", state, "-o", "json"}); err != nil {
		t.Fatal(err)
	}
	var st Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || st.HookFailures == nil || st.HookFailures.Count != 1 {
		t.Errorf("status -o json: %v %+v", err, st.HookFailures)
	}
	out.Reset()
	if err := cmdStatus(&out, pin, []string{"--state-dir", t.TempDir()}); err != nil || strings.Contains(out.String(), "OCI hook") {
		t.Errorf("status without failures mentions them: %v\n%s", err, out.String())
	}
}
