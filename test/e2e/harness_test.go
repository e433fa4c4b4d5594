package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/logtail"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
)

// Binaries built once by TestMain.
var bins struct{ patu, cni, peer string }

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Getenv("PATU_SKIP_PRIVILEGED") == "1" {
		fmt.Println("e2e: PATU_SKIP_PRIVILEGED=1, e2e tests skip")
		return m.Run()
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e tests need root (containerd, netns, cgroups, BPF); run as root or set PATU_SKIP_PRIVILEGED=1 to skip them")
		return 1
	}
	// A killed run leaves its binaries behind. Its labs (fixed prefixes)
	// could not run beside this one either, so every earlier directory
	// is stale.
	if old, err := filepath.Glob(filepath.Join(os.TempDir(), "patu-e2e-*")); err == nil {
		for _, d := range old {
			os.RemoveAll(d)
		}
	}
	dir, err := os.MkdirTemp("", "patu-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins.patu, bins.cni, bins.peer = filepath.Join(dir, "patu"), filepath.Join(dir, "patu-cni"), filepath.Join(dir, "patu-testpeer")
	for out, pkg := range map[string]string{bins.patu: "./cmd/patu", bins.cni: "./cmd/patu-cni", bins.peer: "./test/peer"} {
		// Static: patu-testpeer runs inside the busybox image.
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/patu-dev/patu/"+strings.TrimPrefix(pkg, "./"))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	return m.Run()
}

// node is one runtime flavor under test: a lab (containerd + CRI + CNI in
// its own netns) and a Patu daemon with its own pin directory.
type node struct {
	t       *testing.T
	lab     *rtlab.Lab
	pinDir  string
	events  string
	metrics string
	daemon  *exec.Cmd
	logPath string
	// exited is closed when the daemon process has been waited for;
	// exitErr is its result then.
	exited  chan struct{}
	exitErr error
}

type nodeConfig struct {
	flavor, prefix, subnet, subnet6 string
	events                          string // daemon --events
	cni                             bool   // chain the patu CNI plugin
	uplink                          string // the XDP subtest's uplink subnet (with cni)
}

func newNode(t *testing.T, cfg nodeConfig) *node {
	t.Helper()
	testnet.Privileged(t)
	rtlab.Sweep(cfg.prefix)
	pinDir := "/sys/fs/bpf/patu-e2e-" + cfg.prefix
	bpf.Unload(pinDir)
	lcfg := rtlab.Config{
		Flavor:     cfg.flavor,
		Prefix:     cfg.prefix,
		Subnet:     netip.MustParsePrefix(cfg.subnet),
		ImageFiles: map[string]string{"/bin/patu-testpeer": bins.peer},
	}
	if cfg.subnet6 != "" {
		lcfg.Subnet6 = netip.MustParsePrefix(cfg.subnet6)
	}
	if cfg.cni {
		lcfg.Chain = []rtlab.Plugin{{Type: "patu", Binary: bins.cni, Conf: map[string]any{"bpffs": pinDir}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lab, err := rtlab.Start(ctx, lcfg)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, lab: lab, pinDir: pinDir, events: cfg.events,
		logPath: filepath.Join(t.TempDir(), "daemon.log")}
	// Patu is loaded before any pod exists, as on a node where the daemon
	// ran before: the CNI plugin records pods from the first one on.
	if out, err := exec.Command(bins.patu, "--bpffs", pinDir, "load").CombinedOutput(); err != nil {
		lab.Close()
		t.Fatalf("patu load: %v: %s", err, out)
	}
	t.Cleanup(func() {
		n.stopDaemon(syscall.SIGTERM)
		if err := lab.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
		if _, err := bpf.Unload(pinDir); err != nil {
			t.Errorf("unload: %v", err)
		}
		if t.Failed() || os.Getenv("PATU_E2E_LOG") == "1" {
			b, _ := os.ReadFile(n.logPath)
			t.Logf("daemon log:\n%s", logtail.Lines(b, 400))
		}
	})
	return n
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDaemon starts patu daemon and waits for its first reconcile.
func (n *node) startDaemon() {
	n.t.Helper()
	ready := filepath.Join(n.t.TempDir(), "ready")
	// A fresh port each time: while a killed daemon was down, any client
	// socket of the parallel tests may have taken the old one.
	n.metrics = freeAddr(n.t)
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bins.patu, "--bpffs", n.pinDir, "daemon", "--runtime-endpoint", n.lab.Socket(),
		"--events", n.events, "--metrics-addr", n.metrics, "--ready-file", ready, "--log-level", "debug",
		"--resync", "1m")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// In the node's network namespace, where its pods' host veths are,
	// as on a node: the daemon attaches the pod program to them.
	if err := netns.Do(n.lab.Netns(), cmd.Start); err != nil {
		n.t.Fatal(err)
	}
	n.daemon = cmd
	exited := make(chan struct{})
	n.exited = exited
	go func() { n.exitErr = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			return
		}
		select {
		case <-exited:
			n.daemon = nil
			b, _ := os.ReadFile(n.logPath)
			n.t.Fatalf("daemon exited: %v\n%s", n.exitErr, logtail.Lines(b, 30))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.t.Fatal("daemon not ready after 30s")
		}
	}
}

// stopDaemon signals the daemon and waits for it to exit.
func (n *node) stopDaemon(sig syscall.Signal) {
	if n.daemon == nil {
		return
	}
	n.daemon.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		n.daemon.Process.Kill()
		<-n.exited
	}
	n.daemon = nil
}

func (n *node) daemonRSS() int64 {
	n.t.Helper()
	return rssKiB(n.t, n.daemon.Process.Pid)
}

func rssKiB(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// metric returns the sum of the samples of a metric whose line starts
// with prefix (a name, or a name with labels).
func (n *node) metric(prefix string) float64 {
	n.t.Helper()
	resp, err := nodeHTTP(n.lab.Netns()).Get("http://" + n.metrics + "/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(prefix):]
		if rest != "" && rest[0] != ' ' && rest[0] != '{' {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

func (n *node) dp() *bpf.Datapath {
	n.t.Helper()
	dp, err := bpf.Open(n.pinDir)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { dp.Close() })
	return dp
}

// carried is what Patu's fast paths carried so far (bpf.CarriedBytes).
func (n *node) carried() uint64 {
	n.t.Helper()
	b, err := n.dp().CarriedBytes()
	if err != nil {
		n.t.Fatal(err)
	}
	return b
}

// local returns the local packet path's counters.
func (n *node) local() bpf.LocalCounters {
	n.t.Helper()
	c, err := n.dp().LocalCounters()
	if err != nil {
		n.t.Fatal(err)
	}
	return c
}

// pod runs a pod with one container running cmd.
type pod struct {
	*rtlab.Pod
	ctr string
}

func (n *node) runPod(ctx context.Context, name string, podCgroup bool, ann map[string]string, cmd ...string) *pod {
	n.t.Helper()
	p, err := n.lab.RunPod(ctx, rtlab.PodSpec{Name: name, Namespace: "e2e", Annotations: ann, PodCgroup: podCgroup})
	if err != nil {
		n.t.Fatal(err)
	}
	ctr, err := n.lab.StartContainer(ctx, p, rtlab.ContainerSpec{Name: "main", Command: cmd})
	if err != nil {
		n.t.Fatal(err)
	}
	return &pod{Pod: p, ctr: ctr}
}

func (n *node) removePod(ctx context.Context, p *pod) {
	n.t.Helper()
	if err := n.lab.StopPod(ctx, p.ID); err != nil {
		n.t.Fatal(err)
	}
	if err := n.lab.RemovePod(ctx, p.ID); err != nil {
		n.t.Fatal(err)
	}
}

// waitRegistered waits until the pod's record is confirmed by the runtime
// and its cgroups are attached (cgroups: how many).
func (n *node) waitRegistered(p *pod, cgroups int) bpf.Pod {
	n.t.Helper()
	dp := n.dp()
	var rec bpf.Pod
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		rec, err = dp.LookupPod(p.ID)
		if err == nil && rec.Confirmed && len(rec.Cgroups) >= cgroups {
			return rec
		}
	}
	n.t.Fatalf("pod %s not registered with %d cgroups: %+v (%v)", p.Name, cgroups, rec, err)
	return rec
}

// assertGone checks that nothing of the given pods is left: record,
// endpoint, attachment.
func (n *node) assertGone(ids []string, ips []netip.Addr, cgroups []uint64) {
	n.t.Helper()
	dp := n.dp()
	var left []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		left = left[:0]
		for _, id := range ids {
			if _, err := dp.LookupPod(id); err == nil {
				left = append(left, "pod "+id[:12])
			}
		}
		eps, _ := dp.Endpoints()
		for _, e := range eps {
			for _, ip := range ips {
				if e.IP == ip {
					left = append(left, "endpoint "+ip.String())
				}
			}
		}
		for _, cg := range cgroups {
			if dp.IsAttached(cg) {
				left = append(left, fmt.Sprintf("cgroup %d", cg))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(left) > 0 {
		n.t.Fatalf("left behind: %v", left)
	}
}

// client runs patu-testpeer client in a pod's container and returns its
// result; a failed connection fails the test.
func (n *node) client(ctx context.Context, from *pod, timeout time.Duration, args ...string) peerresult.Result {
	n.t.Helper()
	res, err := n.tryClient(ctx, from, timeout, args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return res
}

// tryClient is client for goroutines other than the test's: it returns
// the failure instead of ending the test.
func (n *node) tryClient(ctx context.Context, from *pod, timeout time.Duration, args ...string) (peerresult.Result, error) {
	argv := append([]string{"/bin/patu-testpeer", "client"}, args...)
	stdout, stderr, code, err := n.lab.Exec(ctx, from.ctr, timeout, argv...)
	if err != nil {
		return peerresult.Result{}, fmt.Errorf("exec client: %w", err)
	}
	res, perr := peerresult.Parse(stdout)
	if code != 0 || perr != nil || res.Failed > 0 {
		return res, fmt.Errorf("client exit %d, result %+v (%v)\nstderr: %s", code, res, perr, logtail.Lines(stderr, 20))
	}
	return res, nil
}

// vethPackets returns rx+tx packets of a pod's host-side veth, which lives
// in the lab's netns: the peer of the pod's eth0.
func (n *node) vethPackets(p *pod) uint64 {
	n.t.Helper()
	var peer int
	err := netns.Do(p.Netns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		peer = l.Attrs().ParentIndex
		return nil
	})
	if err != nil {
		n.t.Fatalf("eth0 of %s: %v", p.Name, err)
	}
	var pk uint64
	err = netns.Do(n.lab.Netns(), func() error {
		l, err := netlink.LinkByIndex(peer)
		if err != nil {
			return err
		}
		s := l.Attrs().Statistics
		pk = s.RxPackets + s.TxPackets
		return nil
	})
	if err != nil {
		n.t.Fatalf("host veth of %s: %v", p.Name, err)
	}
	return pk
}

// nodeHTTP is an HTTP client that connects from inside the node's network
// namespace, where the daemon serves its metrics.
func nodeHTTP(nsPath string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netns.Dial(ctx, nsPath, network, addr)
	}}}
}
