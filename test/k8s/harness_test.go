package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patu-dev/patu/internal/k8slab"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/rtlab"
)

var bins struct{ patu, cni, peer, image string }

// imageRef is what deploy/*/patu.yaml run.
var imageRef string

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	if os.Getenv("PATU_SKIP_PRIVILEGED") == "1" {
		fmt.Println("k8s: PATU_SKIP_PRIVILEGED=1, node tests skip")
		return 0
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "node tests need root (netns, mounts, cgroups, BPF); run as root or set PATU_SKIP_PRIVILEGED=1 to skip them")
		return 1
	}
	// A killed run leaves its binaries behind (its nodes k8slab sweeps).
	if old, err := filepath.Glob(filepath.Join(os.TempDir(), "pk8s-bin-*")); err == nil {
		for _, d := range old {
			os.RemoveAll(d)
		}
	}
	dir, err := os.MkdirTemp("", "pk8s-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins.patu, bins.cni, bins.peer = filepath.Join(dir, "patu"), filepath.Join(dir, "patu-cni"), filepath.Join(dir, "patu-testpeer")
	for out, pkg := range map[string]string{bins.patu: "cmd/patu", bins.cni: "cmd/patu-cni", bins.peer: "test/peer"} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/patu-dev/patu/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	// The image as make image writes it.
	bins.image = filepath.Join(dir, "patu-image.tar")
	cmd := exec.Command("go", "run", "github.com/patu-dev/patu/hack/image", "-bin", dir, "-o", bins.image, "-version-file", "../../deploy/VERSION")
	if b, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "make image: %v\n%s", err, b)
		return 1
	}
	v, err := os.ReadFile("../../deploy/VERSION")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	imageRef = "ghcr.io/patu-dev/patu:" + strings.TrimSpace(string(v))
	return m.Run()
}

// node is a k8slab node for one test.
type node struct {
	t *testing.T
	*k8slab.Node
}

func startNode(t *testing.T, ctx context.Context, name, proxy string) *node {
	t.Helper()
	t0 := time.Now()
	n, err := k8slab.Start(ctx, k8slab.Config{
		Name: name, ProxyMode: proxy,
		ImageFiles: map[string]string{"/bin/patu-testpeer": bins.peer},
		Images:     []string{bins.image},
		Log:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node %s (kube-proxy %s) ready in %s", name, proxy, time.Since(t0).Round(time.Millisecond))
	nd := &node{t: t, Node: n}
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"kubelet", "containerd", "kube-proxy"} {
				b, _ := os.ReadFile(n.LogPath(c))
				t.Logf("%s log, last lines:\n%s", c, lastLines(string(b), 25))
			}
			if out, err := n.Kubectl(context.Background(), "logs", "-n", "kube-system", "ds/patu", "--tail", "40"); err == nil {
				t.Logf("patu daemon log:\n%s", out)
			}
		}
		if err := n.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	return nd
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func (n *node) kubectl(ctx context.Context, args ...string) string {
	n.t.Helper()
	out, err := n.Kubectl(ctx, args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func (n *node) apply(ctx context.Context, manifest string) {
	n.t.Helper()
	if out, err := n.KubectlIn(ctx, []byte(manifest), "apply", "-f", "-"); err != nil {
		n.t.Fatalf("apply: %v\n%s", err, out)
	}
}

// installPatu applies deploy/k3s/patu.yaml and waits for the daemon.
func (n *node) installPatu(ctx context.Context) {
	n.t.Helper()
	m, err := os.ReadFile("../../deploy/k3s/patu.yaml")
	if err != nil {
		n.t.Fatal(err)
	}
	n.apply(ctx, string(m))
	n.waitRollout(ctx, "-n", "kube-system", "daemonset/patu")
	n.waitFor(ctx, "patu daemon loaded", time.Minute, func() error {
		_, err := n.status(ctx)
		return err
	})
}

func (n *node) waitRollout(ctx context.Context, args ...string) {
	n.t.Helper()
	a := append([]string{"rollout", "status", "--timeout=240s"}, args...)
	if out, err := n.Kubectl(ctx, a...); err != nil {
		desc, _ := n.Kubectl(ctx, append([]string{"describe"}, args...)...)
		pods, _ := n.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		n.t.Fatalf("%v: %s\n%s\n%s", err, out, lastLines(string(desc), 30), pods)
	}
}

func (n *node) waitFor(ctx context.Context, what string, timeout time.Duration, fn func() error) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			n.t.Fatalf("%s: not after %s: %v", what, timeout, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// status is what the DaemonSet's patu status -o json says.
type status struct {
	Loaded bool `json:"loaded"`
	Pods   []struct {
		Name      string   `json:"name"`
		Namespace string   `json:"namespace"`
		IPs       []string `json:"ips"`
	} `json:"pods"`
	Attachments []json.RawMessage `json:"attachments"`
	Local       struct {
		Counters struct {
			Admitted      uint64 `json:"admitted"`
			AdmittedNAT   uint64 `json:"admitted_nat"`
			OptedOut      uint64 `json:"opted_out"`
			RedirectBytes uint64 `json:"redirect_bytes"`
			NotMatched    uint64 `json:"not_matched"`
		} `json:"counters"`
	} `json:"local"`
	Counters struct {
		RedirectBytes uint64 `json:"redirect_bytes"`
	} `json:"counters"`
}

func (s status) carried() uint64 { return s.Local.Counters.RedirectBytes + s.Counters.RedirectBytes }

func (n *node) status(ctx context.Context) (status, error) {
	var st status
	out, err := n.Kubectl(ctx, "exec", "-n", "kube-system", "ds/patu", "-c", "daemon", "--", "/usr/local/bin/patu", "status", "-o", "json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("status: %w: %s", err, out)
	}
	if !st.Loaded {
		return st, fmt.Errorf("patu not loaded")
	}
	return st, nil
}

func (n *node) mustStatus(ctx context.Context) status {
	n.t.Helper()
	st, err := n.status(ctx)
	if err != nil {
		n.t.Fatal(err)
	}
	return st
}

// waitRegistered waits until Patu's registered pods of the namespace
// "default" are exactly the running pods of the node (by name).
func (n *node) waitRegistered(ctx context.Context, timeout time.Duration) {
	n.t.Helper()
	n.waitFor(ctx, "registered pods = running pods", timeout, func() error {
		out, err := n.Kubectl(ctx, "get", "pods", "-n", "default", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.metadata.deletionTimestamp}{"\n"}{end}`)
		if err != nil {
			return err
		}
		want := map[string]bool{}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(l)
			if len(f) == 2 && f[1] == "Running" {
				want[f[0]] = true
			} else if len(f) > 0 {
				return fmt.Errorf("pod %s not settled (%s)", f[0], l)
			}
		}
		st, err := n.status(ctx)
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, p := range st.Pods {
			if p.Namespace == "default" {
				have[p.Name] = true
			}
		}
		for p := range want {
			if !have[p] {
				return fmt.Errorf("running pod %s not registered", p)
			}
		}
		for p := range have {
			if !want[p] {
				return fmt.Errorf("pod %s registered but not running", p)
			}
		}
		return nil
	})
}

var clientSeq int

// transfer runs patu-testpeer client in a new pod (so restarts of kubelet
// or containerd do not cut an exec stream) and returns its result; extra
// annotations go on the pod.
func (n *node) transfer(ctx context.Context, target string, annotations map[string]string, args ...string) (peerresult.Result, error) {
	clientSeq++
	name := fmt.Sprintf("client-%d", clientSeq)
	argv := append([]string{"/bin/patu-testpeer", "client", "--connect", target}, args...)
	ann := ""
	for k, v := range annotations {
		ann += fmt.Sprintf("    %s: %q\n", k, v)
	}
	if ann != "" {
		ann = "  annotations:\n" + ann
	}
	q, _ := json.Marshal(argv)
	pod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: {app: client}
%sspec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: c
    image: %s
    imagePullPolicy: Never
    command: %s
`, name, ann, rtlab.WorkloadImage, q)
	if out, err := n.KubectlIn(ctx, []byte(pod), "apply", "-f", "-"); err != nil {
		return peerresult.Result{}, fmt.Errorf("%v: %s", err, out)
	}
	defer n.Kubectl(context.Background(), "delete", "pod", name, "--wait=false")
	var phase string
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		out, _ := n.Kubectl(ctx, "get", "pod", name, "-o", "jsonpath={.status.phase}")
		if phase = string(out); phase == "Succeeded" || phase == "Failed" {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	out, err := n.Kubectl(ctx, "logs", name)
	if err != nil {
		return peerresult.Result{}, err
	}
	// kubectl logs mixes in the client's stderr (progress lines such as
	// "sent N bytes"): the result is its JSON line.
	var result []byte
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "{") {
			result = []byte(l)
		}
	}
	res, perr := peerresult.Parse(result)
	if phase != "Succeeded" || perr != nil || res.Failed > 0 || res.OK == 0 {
		return res, fmt.Errorf("client to %s: phase %s, result %+v (%v): %s", target, phase, res, perr, lastLines(string(out), 10))
	}
	return res, nil
}

// accelerated runs a transfer and checks that it was intact and that the
// local packet path carried it (its redirected bytes grew by at least the
// payload); nat says whether the connection went through a translation.
func (n *node) accelerated(ctx context.Context, what, target string, nat bool) {
	n.t.Helper()
	const payload = 32 << 20
	before := n.mustStatus(ctx)
	res, err := n.transfer(ctx, target, nil, "--mode", "stream", "--bytes", strconv.Itoa(payload))
	if err != nil {
		n.t.Fatalf("%s: %v", what, err)
	}
	after := n.mustStatus(ctx)
	carried := after.carried() - before.carried()
	if res.Bytes < payload || carried < payload {
		n.t.Fatalf("%s: moved %d bytes, Patu carried %d: not accelerated", what, res.Bytes, carried)
	}
	if nat && after.Local.Counters.AdmittedNAT == before.Local.Counters.AdmittedNAT {
		n.t.Errorf("%s: no connection admitted through a translation", what)
	}
	n.t.Logf("%s (%s): %d bytes intact, %d carried by Patu", what, target, res.Bytes, carried)
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func equalFile(a []byte, p string) bool {
	b, err := os.ReadFile(p)
	return err == nil && bytes.Equal(a, b)
}
