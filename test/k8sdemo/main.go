// Command k8sdemo is `sudo make demo-k8s`: the demo's story on a real
// Kubernetes node (internal/k8slab, K3s-shaped, kube-proxy in iptables
// mode), with Patu installed the way users do: the image `make image`
// writes, imported with ctr, and `kubectl apply -f deploy/k3s/patu.yaml`.
// It shows `patu status`, runs the same transfer from a pod to a Service
// over Patu and from an opted-out pod, then `kubectl delete`s Patu and
// removes the node.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/patu-dev/patu/internal/gotool"
	"github.com/patu-dev/patu/internal/k8slab"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/rtlab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo-k8s:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, w io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (netns, mounts, cgroups, BPF): sudo make demo-k8s")
	}
	dir, err := os.MkdirTemp("", "pk8s-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintln(w, "== building patu, patu-cni, patu-testpeer and the image")
	bin := func(name string) string { return filepath.Join(dir, name) }
	for out, pkg := range map[string]string{bin("patu"): "./cmd/patu", bin("patu-cni"): "./cmd/patu-cni", bin("patu-testpeer"): "./test/peer"} {
		cmd := exec.CommandContext(ctx, gotool.Path(), "build", "-trimpath", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v: %s", pkg, err, b)
		}
	}
	v, err := os.ReadFile("deploy/VERSION")
	if err != nil {
		return fmt.Errorf("run from the repository root: %w", err)
	}
	ref := "ghcr.io/patu-dev/patu:" + strings.TrimSpace(string(v))
	image := bin("patu-image.tar")
	if err := rtlab.WriteImage(image, ref, map[string]string{"/usr/local/bin/patu": bin("patu"), "/usr/local/bin/patu-cni": bin("patu-cni")},
		[]string{"/usr/local/bin/patu"}); err != nil {
		return err
	}

	fmt.Fprintln(w, "== starting a K3s-shaped node (kine, apiserver, controller-manager, scheduler, containerd, kubelet, kube-proxy)")
	t0 := time.Now()
	n, err := k8slab.Start(ctx, k8slab.Config{Name: "demo", ImageFiles: map[string]string{"/bin/patu-testpeer": bin("patu-testpeer")},
		Images: []string{image}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(w, "== removing the node")
		if cerr := n.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	fmt.Fprintf(w, "node %s ready in %s\n", n.Hostname(), time.Since(t0).Round(100*time.Millisecond))
	kubectl := func(stdin []byte, args ...string) (string, error) {
		out, err := n.KubectlIn(ctx, stdin, args...)
		return strings.TrimSpace(string(out)), err
	}
	show := func(args ...string) error {
		fmt.Fprintf(w, "$ kubectl %s\n", strings.Join(args, " "))
		out, err := kubectl(nil, args...)
		fmt.Fprintln(w, out)
		return err
	}

	manifest, err := os.ReadFile("deploy/k3s/patu.yaml")
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "== kubectl apply -f deploy/k3s/patu.yaml")
	if _, err := kubectl(manifest, "apply", "-f", "-"); err != nil {
		return err
	}
	if _, err := kubectl(nil, "rollout", "status", "-n", "kube-system", "ds/patu", "--timeout=180s"); err != nil {
		return err
	}
	app := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: server}
spec:
  replicas: 1
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      containers:
      - {name: s, image: %s, imagePullPolicy: Never, command: [/bin/patu-testpeer, serve, --listen, "[::]:8080", --mode, sink],
         readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec: {selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
`, rtlab.WorkloadImage)
	if _, err := kubectl([]byte(app), "apply", "-f", "-"); err != nil {
		return err
	}
	if _, err := kubectl(nil, "rollout", "status", "deploy/server", "--timeout=120s"); err != nil {
		return err
	}
	if err := show("get", "pods", "-A", "-o", "wide"); err != nil {
		return err
	}
	vip, err := kubectl(nil, "get", "svc", "server", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return err
	}
	for i, optOut := range []bool{false, true} {
		ann := "{}"
		what := "over Patu"
		if optOut {
			ann, what = `{patu.io/redirect: "false"}`, "opted out (kube-proxy path)"
		}
		pod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: client%d, annotations: %s}
spec:
  restartPolicy: Never
  containers:
  - {name: c, image: %s, imagePullPolicy: Never, command: [/bin/patu-testpeer, client, --connect, "%s:80", --mode, stream, --duration, 5s]}
`, i, ann, rtlab.WorkloadImage, vip)
		if _, err := kubectl([]byte(pod), "apply", "-f", "-"); err != nil {
			return err
		}
		if _, err := kubectl(nil, "wait", "--for=jsonpath={.status.phase}=Succeeded", fmt.Sprintf("pod/client%d", i), "--timeout=120s"); err != nil {
			return err
		}
		out, err := kubectl(nil, "logs", fmt.Sprintf("client%d", i))
		if err != nil {
			return err
		}
		// kubectl logs mixes in the client's stderr: the result is the
		// JSON line.
		var line string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "{") {
				line = l
			}
		}
		res, err := peerresult.Parse([]byte(line))
		if err != nil || res.Failed > 0 {
			return fmt.Errorf("client %s: %v %+v", what, err, res)
		}
		gbps := float64(res.Bytes) * 8 / float64(res.DurationNS)
		fmt.Fprintf(w, "pod → ClusterIP %s:80, %s: %.0f MiB intact in %.1f s, %.2f Gbit/s\n", vip, what, float64(res.Bytes)/(1<<20), float64(res.DurationNS)/1e9, gbps)
	}
	fmt.Fprintln(w, "$ kubectl exec -n kube-system ds/patu -- patu status")
	out, err := kubectl(nil, "exec", "-n", "kube-system", "ds/patu", "-c", "daemon", "--", "/usr/local/bin/patu", "status")
	fmt.Fprintln(w, out)
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "== kubectl delete -f deploy/k3s/patu.yaml")
	if _, err := kubectl(manifest, "delete", "-f", "-", "--wait=true", "--timeout=120s"); err != nil {
		return err
	}
	// The DaemonSet goes first; its pod's preStop (patu uninstall) runs
	// while the pod terminates.
	if _, err := kubectl(nil, "wait", "--for=delete", "pod", "-n", "kube-system", "-l", "app.kubernetes.io/name=patu", "--timeout=120s"); err != nil {
		return err
	}
	ents, _ := os.ReadDir(n.HostPath(k8slab.CNIConfDir))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	b, _ := json.Marshal(names)
	fmt.Fprintf(w, "CNI conf dir after delete: %s\n", b)
	return nil
}
