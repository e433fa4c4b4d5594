package cniplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// netConf returns a configuration for the plugin; prev is the prevResult
// JSON or "".
func netConf(version, bpffs, logFile, prev string) []byte {
	c := map[string]any{"cniVersion": version, "name": "podnet", "type": "patu", "bpffs": bpffs}
	if logFile != "" {
		c["logFile"] = logFile
	}
	if prev != "" {
		c["prevResult"] = json.RawMessage(prev)
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}

func testArgs(stdin []byte) *skel.CmdArgs {
	return &skel.CmdArgs{
		ContainerID: "0123456789abcdef",
		Netns:       "/nonexistent/netns",
		IfName:      "eth0",
		Args:        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
		Path:        "/opt/cni/bin",
		StdinData:   stdin,
	}
}

// jsonEqual reports whether a and b are the same JSON value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("%v: %s", err, a)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return reflect.DeepEqual(va, vb)
}

func TestAddRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	pin := filepath.Join(dir, "bpffs")
	for _, tc := range []struct {
		name  string
		stdin []byte
		args  string
		code  uint
		msg   string
	}{
		{"no prevResult", netConf("1.0.0", pin, "", ""), "", types.ErrInvalidNetworkConfig, "needs prevResult"},
		{"malformed JSON", []byte(`{"cniVersion":"1.0.0","name":`), "", types.ErrDecodingFailure, "parse network configuration"},
		{"malformed prevResult", netConf("1.0.0", pin, "", `{"ips":[{"address":"10.0.0.300/24"}]}`), "", types.ErrDecodingFailure, "parse prevResult"},
		{"malformed CNI_ARGS", netConf("1.0.0", pin, "", bridge100Dual), "K8S_POD_NAME", types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"wrong annotations type", []byte(`{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"io.kubernetes.cri.pod-annotations":[1]},"prevResult":` + bridge100Dual + `}`),
			"", types.ErrDecodingFailure, "parse network configuration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			p := &Plugin{Stdout: &out, Stderr: &errOut}
			args := testArgs(tc.stdin)
			args.Args = tc.args
			err := p.Add(args)
			var e *types.Error
			if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) {
				t.Fatalf("Add = %v, want CNI error %d mentioning %q", err, tc.code, tc.msg)
			}
			if out.Len() != 0 {
				t.Errorf("printed a result on error: %s", out.String())
			}
		})
	}
}

func TestAddPassesThroughWithoutPatu(t *testing.T) {
	dir := t.TempDir()
	pin := filepath.Join(dir, "not-loaded")
	logFile := filepath.Join(dir, "log", "patu-cni.log")
	for _, tc := range []struct {
		name, version, prev string
	}{
		{"0.3.1", "0.3.1", strings.Replace(bridge040Dual, `"0.4.0"`, `"0.3.1"`, 1)},
		{"0.4.0", "0.4.0", bridge040Dual},
		{"1.0.0", "1.0.0", bridge100Dual},
		{"1.1.0", "1.1.0", strings.Replace(bridge100Dual, `"1.0.0"`, `"1.1.0"`, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			p := &Plugin{Stdout: &out, Stderr: &errOut}
			if err := p.Add(testArgs(netConf(tc.version, pin, logFile, tc.prev))); err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, out.Bytes(), []byte(tc.prev)) {
				t.Errorf("result is not prevResult:\n got %s\nwant %s", out.Bytes(), tc.prev)
			}
			if errOut.Len() != 0 {
				t.Errorf("Patu not loaded is not a failure, yet stderr got: %s", errOut.String())
			}
		})
	}
	log, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "patu not loaded"); n != 4 {
		t.Errorf("log file has %d 'patu not loaded' lines, want 4:\n%s", n, log)
	}
}

func TestDelStatusGCWithoutPatu(t *testing.T) {
	pin := filepath.Join(t.TempDir(), "not-loaded")
	p := &Plugin{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}}
	for _, tc := range []struct {
		name string
		run  func(*skel.CmdArgs) error
		conf []byte
		mod  func(*skel.CmdArgs)
	}{
		{"DEL with netns and prevResult", p.Del, netConf("1.0.0", pin, "", bridge100Dual), nil},
		{"DEL without netns and prevResult", p.Del, netConf("1.0.0", pin, "", ""), func(a *skel.CmdArgs) { a.Netns = "" }},
		{"DEL with a broken prevResult", p.Del, netConf("1.0.0", pin, "", `{"ips":[{"address":"x"}]}`), nil},
		{"CHECK", p.Check, netConf("1.0.0", pin, "", bridge100Dual), nil},
		{"STATUS", p.Status, netConf("1.1.0", pin, "", ""), nil},
		{"GC", p.GC, []byte(`{"cniVersion":"1.1.0","name":"n","bpffs":"` + pin + `","cni.dev/valid-attachments":[]}`), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := testArgs(tc.conf)
			if tc.mod != nil {
				tc.mod(args)
			}
			if err := tc.run(args); err != nil {
				t.Errorf("%v", err)
			}
		})
	}
	err := p.Check(testArgs(netConf("1.0.0", pin, "", "")))
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
		t.Errorf("CHECK without prevResult = %v, want CNI error %d", err, types.ErrInvalidNetworkConfig)
	}
}
