package k8s

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patu-dev/patu/install"
	"github.com/patu-dev/patu/internal/k8slab"
	"github.com/patu-dev/patu/internal/rtlab"
)

// Ports of the workload.
const (
	serverPort = 8080
	svcPort    = 80
	nodePort   = 30080
	hostPort   = 18080
)

// workload: two sink servers behind a ClusterIP and a NodePort Service,
// with a readiness probe; a hostPort server (Recreate: one node, one
// port); an opted-out pod template.
var workload = fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: server}
spec:
  replicas: 2
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: s
        image: %[1]s
        imagePullPolicy: Never
        command: [/bin/patu-testpeer, serve, --listen, "[::]:%[2]d", --mode, sink]
        ports: [{containerPort: %[2]d}]
        readinessProbe:
          tcpSocket: {port: %[2]d}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: server}
spec:
  selector: {app: server}
  ports: [{port: %[3]d, targetPort: %[2]d}]
---
apiVersion: v1
kind: Service
metadata: {name: server-np}
spec:
  type: NodePort
  selector: {app: server}
  ports: [{port: %[3]d, targetPort: %[2]d, nodePort: %[4]d}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: hostport}
spec:
  replicas: 1
  strategy: {type: Recreate}
  selector: {matchLabels: {app: hostport}}
  template:
    metadata: {labels: {app: hostport}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: s
        image: %[1]s
        imagePullPolicy: Never
        command: [/bin/patu-testpeer, serve, --listen, "[::]:%[2]d", --mode, sink]
        ports: [{containerPort: %[2]d, hostPort: %[5]d}]
        readinessProbe:
          tcpSocket: {port: %[2]d}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: optout}
spec:
  replicas: 1
  selector: {matchLabels: {app: optout}}
  template:
    metadata:
      labels: {app: optout}
      annotations: {patu.io/redirect: "false"}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: s
        image: %[1]s
        imagePullPolicy: Never
        command: [/bin/patu-testpeer, serve, --listen, "[::]:%[2]d", --mode, sink]
        readinessProbe:
          tcpSocket: {port: %[2]d}
          periodSeconds: 1
`, rtlab.WorkloadImage, serverPort, svcPort, nodePort, hostPort)

// churn is a Deployment of idle pods for scale 0 → 50 → 0.
var churn = fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: churn}
spec:
  replicas: 0
  selector: {matchLabels: {app: churn}}
  template:
    metadata: {labels: {app: churn}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: c
        image: %s
        imagePullPolicy: Never
        command: [/bin/sleep, "3600"]
`, rtlab.WorkloadImage)

// TestK3s runs the whole story on a K3s-shaped node with kube-proxy in
// iptables mode.
func TestK3s(t *testing.T) {
	// Beside TestK3sNFTables: two nodes, each its own names, netns and
	// cgroup root; the short one ends while this one is still early.
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	n := startNode(t, ctx, "ipt", k8slab.ProxyIPTables)
	confDir := n.HostPath(k8slab.CNIConfDir)
	bridgeConf, err := os.ReadFile(filepath.Join(confDir, k8slab.BridgeConflist))
	if err != nil {
		t.Fatal(err)
	}

	n.installPatu(ctx)
	if !exists(filepath.Join(confDir, install.ChainedName)) || !exists(filepath.Join(n.HostPath(k8slab.CNIBinDir), "patu")) {
		t.Fatal("the init container did not install 00-patu.conflist and the patu plugin")
	}
	n.apply(ctx, workload)
	for _, d := range []string{"server", "hostport", "optout"} {
		n.waitRollout(ctx, "deployment/"+d)
	}
	n.waitRegistered(ctx, time.Minute)

	t.Run("services", func(t *testing.T) { n.t = t; servicesAccelerated(ctx, n) })
	n.t = t

	t.Run("opt-out", func(t *testing.T) {
		n.t = t
		ip := n.kubectl(ctx, "get", "pods", "-l", "app=optout", "-o", "jsonpath={.items[0].status.podIP}")
		before := n.mustStatus(ctx)
		res, err := n.transfer(ctx, fmt.Sprintf("%s:%d", ip, serverPort), nil, "--mode", "stream", "--bytes", strconv.Itoa(8<<20))
		if err != nil {
			t.Fatal(err)
		}
		after := n.mustStatus(ctx)
		if after.Local.Counters.Admitted != before.Local.Counters.Admitted || after.Local.Counters.OptedOut == before.Local.Counters.OptedOut {
			t.Fatalf("to an opted-out pod: admitted %d → %d, opted out %d → %d: want no admission, an opt-out",
				before.Local.Counters.Admitted, after.Local.Counters.Admitted, before.Local.Counters.OptedOut, after.Local.Counters.OptedOut)
		}
		t.Logf("opted-out pod: %d bytes intact on the normal path", res.Bytes)
	})
	n.t = t

	t.Run("rolling update and deletion", func(t *testing.T) {
		n.t = t
		old := n.kubectl(ctx, "get", "pods", "-l", "app=server", "-o", "jsonpath={.items[*].metadata.name}")
		n.kubectl(ctx, "rollout", "restart", "deployment/server")
		n.waitRollout(ctx, "deployment/server")
		n.waitRegistered(ctx, time.Minute)
		now := n.kubectl(ctx, "get", "pods", "-l", "app=server", "-o", "jsonpath={.items[*].metadata.name}")
		for _, p := range strings.Fields(old) {
			if strings.Contains(now, p) {
				t.Fatalf("pod %s survived the rolling update", p)
			}
		}
		n.accelerated(ctx, "pod → ClusterIP after a rolling update", n.serviceAddr(ctx), true)
		victim := strings.Fields(now)[0]
		n.kubectl(ctx, "delete", "pod", victim)
		n.waitRollout(ctx, "deployment/server")
		n.waitRegistered(ctx, time.Minute)
	})
	n.t = t

	t.Run("scale 0-50-0 twice", func(t *testing.T) {
		n.t = t
		n.apply(ctx, churn)
		for round := 1; round <= 2; round++ {
			t0 := time.Now()
			n.kubectl(ctx, "scale", "deployment/churn", "--replicas=50")
			n.waitRollout(ctx, "deployment/churn")
			n.waitRegistered(ctx, 2*time.Minute)
			up := time.Since(t0)
			n.kubectl(ctx, "scale", "deployment/churn", "--replicas=0")
			n.waitFor(ctx, "churn pods gone", 3*time.Minute, func() error {
				out, err := n.Kubectl(ctx, "get", "pods", "-l", "app=churn", "-o", "name")
				if err != nil || len(strings.TrimSpace(string(out))) > 0 {
					return fmt.Errorf("left: %q %v", out, err)
				}
				return nil
			})
			n.waitRegistered(ctx, time.Minute)
			t.Logf("round %d: 50 pods up and registered in %s, all gone and unregistered %s later", round, up.Round(time.Second), (time.Since(t0) - up).Round(time.Second))
		}
	})
	n.t = t

	t.Run("restarts during traffic", func(t *testing.T) {
		n.t = t
		target := n.serviceAddr(ctx)
		for _, c := range []struct {
			what    string
			disrupt func() error
		}{
			{"kubelet restart", func() error {
				if err := n.Stop("kubelet"); err != nil {
					return err
				}
				return n.StartKubelet(ctx)
			}},
			{"containerd restart", func() error {
				if err := n.Stop("containerd"); err != nil {
					return err
				}
				return n.StartContainerd(ctx)
			}},
			{"kill -9 of patu daemon", func() error {
				pid, err := n.daemonPid()
				if err != nil {
					return err
				}
				return syscall.Kill(pid, syscall.SIGKILL)
			}},
		} {
			done := make(chan error, 1)
			go func() {
				_, err := n.transfer(ctx, target, nil, "--mode", "stream", "--duration", "8s")
				done <- err
			}()
			// Once the client pod streams.
			n.waitFor(ctx, "client running", time.Minute, func() error {
				out, err := n.Kubectl(ctx, "get", "pods", "-l", "app=client", "-o", "jsonpath={.items[*].status.phase}")
				if err != nil || !strings.Contains(string(out), "Running") {
					return fmt.Errorf("client: %q %v", out, err)
				}
				return nil
			})
			time.Sleep(2 * time.Second)
			if err := c.disrupt(); err != nil {
				t.Fatalf("%s: %v", c.what, err)
			}
			if err := <-done; err != nil {
				t.Fatalf("traffic during %s: %v", c.what, err)
			}
			n.waitRollout(ctx, "-n", "kube-system", "daemonset/patu")
			n.waitFor(ctx, "patu daemon back", time.Minute, func() error { _, err := n.status(ctx); return err })
			n.waitRegistered(ctx, time.Minute)
			n.accelerated(ctx, "pod → ClusterIP after "+c.what, target, true)
		}
	})
	n.t = t

	uninstallLeavesNothing(ctx, n, bridgeConf)
}

// servicesAccelerated: pod → pod and pod → ClusterIP carried by Patu and
// intact, with nothing configured in Patu. pod → NodePort and pod →
// hostPort on the node's address are intact; on this node both are
// masqueraded (kube-proxy masquerades NodePort traffic with
// externalTrafficPolicy Cluster; portmap's hairpin rule matches the whole
// pod subnet), so the server sees the node's address and the packet path
// counts the answer as not matched and leaves it to the kernel: checked
// as such, so a data plane that matches masqueraded connections shows up
// here.
func servicesAccelerated(ctx context.Context, n *node) {
	ip := n.kubectl(ctx, "get", "pods", "-l", "app=server", "-o", "jsonpath={.items[0].status.podIP}")
	n.accelerated(ctx, "pod → pod", fmt.Sprintf("%s:%d", ip, serverPort), false)
	n.accelerated(ctx, "pod → ClusterIP", n.serviceAddr(ctx), true)
	for _, c := range []struct{ what, target string }{
		{"pod → NodePort on the node address", fmt.Sprintf("%s:%d", k8slab.NodeIP, nodePort)},
		{"pod → hostPort on the node address", fmt.Sprintf("%s:%d", k8slab.NodeIP, hostPort)},
	} {
		before := n.mustStatus(ctx)
		res, err := n.transfer(ctx, c.target, nil, "--mode", "stream", "--bytes", strconv.Itoa(32<<20))
		if err != nil {
			n.t.Fatalf("%s: %v", c.what, err)
		}
		after := n.mustStatus(ctx)
		carried := after.carried() - before.carried()
		notMatched := after.Local.Counters.NotMatched - before.Local.Counters.NotMatched
		n.t.Logf("%s (%s): %d bytes intact; Patu carried %d, admitted through a translation %d, answers not matched (masqueraded) %d",
			c.what, c.target, res.Bytes, carried, after.Local.Counters.AdmittedNAT-before.Local.Counters.AdmittedNAT, notMatched)
		if carried < uint64(res.Bytes) && notMatched == 0 {
			n.t.Errorf("%s: neither carried by Patu nor counted as masqueraded", c.what)
		}
	}
}

// uninstallLeavesNothing deletes the DaemonSet and checks the node is as
// before Patu: its own conflist byte for byte, no 00-patu.conflist, no
// plugin, no install record, no pins.
func uninstallLeavesNothing(ctx context.Context, n *node, bridgeConf []byte) {
	n.t.Helper()
	m, err := os.ReadFile("../../deploy/k3s/patu.yaml")
	if err != nil {
		n.t.Fatal(err)
	}
	if out, err := n.KubectlIn(ctx, m, "delete", "-f", "-", "--wait=true", "--timeout=120s"); err != nil {
		n.t.Fatalf("kubectl delete: %v: %s", err, out)
	}
	n.waitFor(ctx, "patu pods gone", 2*time.Minute, func() error {
		out, err := n.Kubectl(ctx, "get", "pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=patu", "-o", "name")
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			return fmt.Errorf("left: %q %v", out, err)
		}
		return nil
	})
	confDir := n.HostPath(k8slab.CNIConfDir)
	if ents, _ := os.ReadDir(confDir); len(ents) != 1 || !equalFile(bridgeConf, filepath.Join(confDir, k8slab.BridgeConflist)) {
		n.t.Errorf("CNI conf dir after kubectl delete: %v, want only %s as it was", ents, k8slab.BridgeConflist)
	}
	for _, p := range []string{filepath.Join(n.HostPath(k8slab.CNIBinDir), "patu"), n.HostPath(install.ManifestPath)} {
		if exists(p) {
			n.t.Errorf("%s left after kubectl delete", p)
		}
	}
	// The node's own bpffs: only the kernel's preload iterators
	// (maps.debug, progs.debug) may be there.
	out, err := n.Exec(ctx, nil, "find", "/sys/fs/bpf", "-mindepth", "1", "-not", "-name", "*.debug")
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		n.t.Errorf("pins left in the node's bpffs after kubectl delete: %q %v", out, err)
	}
}

// daemonPid finds patu daemon among the node's processes.
func (n *node) daemonPid() (int, error) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.HasPrefix(string(b), "/usr/local/bin/patu\x00daemon\x00") {
			continue
		}
		cg, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cgroup"))
		if !strings.Contains(string(cg), n.CgroupRoot()+"/") {
			continue
		}
		return strconv.Atoi(filepath.Base(filepath.Dir(p)))
	}
	return 0, fmt.Errorf("patu daemon of node %s not found", n.Hostname())
}

// TestK3sNFTables: the Service checks with kube-proxy in nftables mode.
func TestK3sNFTables(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	n := startNode(t, ctx, "nft", k8slab.ProxyNFTables)
	bridgeConf, err := os.ReadFile(filepath.Join(n.HostPath(k8slab.CNIConfDir), k8slab.BridgeConflist))
	if err != nil {
		t.Fatal(err)
	}
	n.installPatu(ctx)
	n.apply(ctx, workload)
	for _, d := range []string{"server", "hostport"} {
		n.waitRollout(ctx, "deployment/"+d)
	}
	n.waitRegistered(ctx, time.Minute)
	servicesAccelerated(ctx, n)
	uninstallLeavesNothing(ctx, n, bridgeConf)
}

// serviceAddr is the server Service's cluster IP and port (the node runs
// no DNS).
func (n *node) serviceAddr(ctx context.Context) string {
	return fmt.Sprintf("%s:%d", n.kubectl(ctx, "get", "service", "server", "-o", "jsonpath={.spec.clusterIP}"), svcPort)
}
