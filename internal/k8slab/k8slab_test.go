package k8slab

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	if os.Getenv("PATU_SKIP_PRIVILEGED") == "1" {
		fmt.Println("k8slab: PATU_SKIP_PRIVILEGED=1, node tests skip")
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "k8slab tests need root (netns, mounts, cgroups); run as root or set PATU_SKIP_PRIVILEGED=1 to skip them")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestNodeRunsPod starts a node, runs a pod through kubelet and checks that
// closing the node leaves nothing behind.
func TestNodeRunsPod(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n, err := Start(ctx, Config{Name: "tlab", Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			n.Close()
		}
	}()
	pod := `apiVersion: v1
kind: Pod
metadata: {name: p1}
spec:
  containers:
  - name: c
    image: localhost/patu/workload:latest
    imagePullPolicy: Never
    command: ["/bin/sleep", "3600"]
`
	if _, err := n.KubectlIn(ctx, []byte(pod), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Kubectl(ctx, "wait", "--for=condition=Ready", "pod/p1", "--timeout=90s"); err != nil {
		out, _ := n.Kubectl(ctx, "describe", "pod", "p1")
		t.Fatalf("%v\n%s\nkubelet:\n%s", err, out, tail(n.LogPath("kubelet"), 30))
	}
	ip, err := n.Kubectl(ctx, "get", "pod", "p1", "-o", "jsonpath={.status.podIP}")
	if err != nil || !strings.HasPrefix(string(ip), "10.42.0.") {
		t.Fatalf("pod IP %q, %v", ip, err)
	}
	if _, err := n.PodPid(ctx, "default", "p1"); err != nil {
		t.Error(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	for _, p := range []string{n.Dir(), "/sys/fs/cgroup/pids" + n.CgroupRoot(), n.Netns()} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after Close (%v)", p, err)
		}
	}
}
