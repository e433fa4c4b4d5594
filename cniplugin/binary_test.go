package cniplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pluginBin is the patu-cni binary TestMain builds for tests that exec it
// as a runtime would.
var pluginBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "patu-cni-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	pluginBin = filepath.Join(dir, "patu")
	// go test puts GOROOT/bin first in PATH.
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", pluginBin, "github.com/patu-dev/patu/cmd/patu-cni")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build patu-cni: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// execResult is what one exec of the plugin produced.
type execResult struct {
	stdout, stderr []byte
	exitCode       int
}

// cniError decodes stdout as a CNI error.
func (r execResult) cniError(t *testing.T) (code uint, msg string) {
	t.Helper()
	var e struct {
		Code    uint   `json:"code"`
		Msg     string `json:"msg"`
		Details string `json:"details"`
	}
	if err := json.Unmarshal(r.stdout, &e); err != nil {
		t.Fatalf("stdout is not a CNI error: %v: %s", err, r.stdout)
	}
	return e.Code, e.Msg + ": " + e.Details
}

// execPlugin runs the plugin binary with env (KEY=VALUE, over a clean
// environment) and stdin.
func execPlugin(t testing.TB, env []string, stdin []byte) execResult {
	t.Helper()
	r, err := runPlugin(env, stdin)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// runPlugin is execPlugin for code that must not call t.Fatal: inside
// netns.Do, fn runs on a goroutine of its own.
func runPlugin(env []string, stdin []byte) (execResult, error) {
	cmd := exec.Command(pluginBin)
	cmd.Env = env
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return execResult{}, fmt.Errorf("exec %s: %w", pluginBin, err)
	}
	return execResult{stdout: out.Bytes(), stderr: errOut.Bytes(), exitCode: cmd.ProcessState.ExitCode()}, nil
}

func cniEnv(cmd, containerID, netnsPath, ifName, args string) []string {
	env := []string{"CNI_COMMAND=" + cmd, "CNI_PATH=/opt/cni/bin"}
	for k, v := range map[string]string{
		"CNI_CONTAINERID": containerID, "CNI_NETNS": netnsPath, "CNI_IFNAME": ifName, "CNI_ARGS": args,
	} {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

func TestBinaryErrors(t *testing.T) {
	pin := filepath.Join(t.TempDir(), "not-loaded")
	const id = "c0ffee"
	for _, tc := range []struct {
		name  string
		env   []string
		stdin []byte
		code  uint
		msg   string
	}{
		{"ADD without prevResult", cniEnv("ADD", id, "/x", "eth0", ""), netConf("1.0.0", pin, "", ""), 7, "needs prevResult"},
		{"ADD with malformed JSON", cniEnv("ADD", id, "/x", "eth0", ""), []byte(`{"name":"n",`), 6, "unmarshal"},
		{"ADD without CNI_CONTAINERID", cniEnv("ADD", "", "/x", "eth0", ""), netConf("1.0.0", pin, "", bridge100Dual), 4, "CNI_CONTAINERID"},
		{"ADD without CNI_NETNS", cniEnv("ADD", id, "", "eth0", ""), netConf("1.0.0", pin, "", bridge100Dual), 4, "CNI_NETNS"},
		{"ADD without CNI_IFNAME", cniEnv("ADD", id, "/x", "", ""), netConf("1.0.0", pin, "", bridge100Dual), 4, "CNI_IFNAME"},
		{"ADD with an unsupported version", cniEnv("ADD", id, "/x", "eth0", ""), netConf("0.2.0", pin, "", `{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}`), 1, "incompatible CNI versions"},
		{"ADD with malformed CNI_ARGS", cniEnv("ADD", id, "/x", "eth0", "K8S_POD_NAME"), netConf("1.0.0", pin, "", bridge100Dual), 4, "CNI_ARGS"},
		{"CHECK without prevResult", cniEnv("CHECK", id, "/x", "eth0", ""), netConf("1.0.0", pin, "", ""), 7, "needs prevResult"},
		{"STATUS before 1.1.0", cniEnv("STATUS", "", "", "", ""), netConf("1.0.0", pin, "", ""), 1, "does not allow STATUS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := execPlugin(t, tc.env, tc.stdin)
			if r.exitCode == 0 {
				t.Fatalf("exit 0, stdout %s", r.stdout)
			}
			code, msg := r.cniError(t)
			if code != tc.code || !strings.Contains(msg, tc.msg) {
				t.Errorf("error %d %q, want %d mentioning %q", code, msg, tc.code, tc.msg)
			}
		})
	}
}

func TestBinaryWithoutPatu(t *testing.T) {
	pin := filepath.Join(t.TempDir(), "not-loaded")
	const id = "c0ffee"
	r := execPlugin(t, cniEnv("ADD", id, "/nonexistent", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=a"), netConf("1.0.0", pin, "", bridge100Dual))
	if r.exitCode != 0 || !jsonEqual(t, r.stdout, []byte(bridge100Dual)) {
		t.Errorf("ADD: exit %d, stdout %s, stderr %s; want prevResult", r.exitCode, r.stdout, r.stderr)
	}
	for _, tc := range []struct {
		name  string
		env   []string
		stdin []byte
	}{
		{"DEL", cniEnv("DEL", id, "/nonexistent", "eth0", ""), netConf("1.0.0", pin, "", bridge100Dual)},
		{"DEL again, no netns", cniEnv("DEL", id, "", "eth0", ""), netConf("1.0.0", pin, "", "")},
		{"CHECK", cniEnv("CHECK", id, "/nonexistent", "eth0", ""), netConf("1.0.0", pin, "", bridge100Dual)},
		{"STATUS", cniEnv("STATUS", "", "", "", ""), netConf("1.1.0", pin, "", "")},
		{"GC", cniEnv("GC", "", "", "", ""), []byte(`{"cniVersion":"1.1.0","name":"n","bpffs":"` + pin + `","cni.dev/valid-attachments":[]}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := execPlugin(t, tc.env, tc.stdin)
			if r.exitCode != 0 || len(r.stdout) != 0 {
				t.Errorf("exit %d, stdout %s, stderr %s", r.exitCode, r.stdout, r.stderr)
			}
		})
	}
}

func TestBinaryVersion(t *testing.T) {
	r := execPlugin(t, []string{"CNI_COMMAND=VERSION"}, nil)
	var v struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(r.stdout, &v); err != nil || r.exitCode != 0 {
		t.Fatalf("VERSION: exit %d, %v: %s", r.exitCode, err, r.stdout)
	}
	if got := strings.Join(v.Supported, " "); got != "0.3.1 0.4.0 1.0.0 1.1.0" {
		t.Errorf("supported versions %q", got)
	}
	r = execPlugin(t, nil, nil)
	if r.exitCode != 0 || !strings.Contains(string(r.stderr), "patu chained plugin") {
		t.Errorf("without CNI_COMMAND: exit %d, stderr %q; want the about string", r.exitCode, r.stderr)
	}
}
