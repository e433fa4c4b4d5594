package rtlab_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
)

// Prefixes "rl*", 10.202.1.0/24, 10.202.2.0/24 and fd00:202:1::/64 belong
// to this package's tests.

// chainType is the type of the chained CNI plugin the tests add: this test
// binary, linked into the lab's CNI bin directory under that name.
const chainType = "rtlab-test-chain"

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == chainType {
		os.Exit(chainPlugin())
	}
	os.Exit(m.Run())
}

// chainPlugin is a minimal chained CNI plugin: it appends each call (verb,
// sandbox id, stdin) as one JSON line to the file its conf names in
// "record", and passes prevResult through on ADD.
func chainPlugin() int {
	stdin, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd := os.Getenv("CNI_COMMAND")
	if cmd == "VERSION" {
		fmt.Println(`{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}`)
		return 0
	}
	var conf struct {
		CNIVersion    string         `json:"cniVersion"`
		Record        string         `json:"record"`
		PrevResult    map[string]any `json:"prevResult"`
		RuntimeConfig struct {
			Annotations map[string]string `json:"io.kubernetes.cri.pod-annotations"`
		} `json:"runtimeConfig"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		fmt.Fprintf(os.Stderr, `{"code":6,"msg":"decode config: %v"}`, err)
		return 1
	}
	line, _ := json.Marshal(chainCall{Command: cmd, Sandbox: os.Getenv("CNI_CONTAINERID"), Stdin: stdin})
	f, err := os.OpenFile(conf.Record, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err == nil {
		_, err = f.Write(append(line, '\n'))
		f.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, `{"code":11,"msg":"record: %v"}`, err)
		return 1
	}
	if cmd == "ADD" {
		if conf.RuntimeConfig.Annotations[failAddAnnotation] == "yes" {
			fmt.Printf(`{"cniVersion":%q,"code":999,"msg":"failing ADD as the pod asked"}`, conf.CNIVersion)
			return 1
		}
		if conf.PrevResult == nil {
			fmt.Printf(`{"cniVersion":%q,"code":7,"msg":"no prevResult: must be chained"}`, conf.CNIVersion)
			return 1
		}
		conf.PrevResult["cniVersion"] = conf.CNIVersion
		json.NewEncoder(os.Stdout).Encode(conf.PrevResult)
	}
	return 0
}

// failAddAnnotation makes chainPlugin fail ADD for the pod.
const failAddAnnotation = "rtlab.test/fail-add"

// chainCall is one call of chainPlugin.
type chainCall struct {
	Command string          `json:"command"`
	Sandbox string          `json:"sandbox"`
	Stdin   json.RawMessage `json:"stdin"`
}

func chainCalls(t *testing.T, record string) []chainCall {
	t.Helper()
	data, err := os.ReadFile(record)
	if err != nil {
		t.Fatalf("chained plugin never ran: %v", err)
	}
	var calls []chainCall
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var c chainCall
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		calls = append(calls, c)
	}
	return calls
}

// TestLab runs one lab per containerd flavor, side by side (which also
// shows that two labs coexist): pods reach each other over TCP, a pod
// cgroup is where kubelet would put it, containerd restarts under running
// pods, and Close after a SIGKILL of containerd leaves nothing behind.
func TestLab(t *testing.T) {
	testnet.Privileged(t)
	for _, tc := range []struct {
		flavor, prefix  string
		subnet, subnet6 netip.Prefix
		// sweep cleans up after the containerd crash with Sweep, as the
		// next run would after a crash of the test, instead of Close.
		sweep bool
	}{
		{rtlab.Flavor16, "rl16", netip.MustParsePrefix("10.202.1.0/24"), netip.MustParsePrefix("fd00:202:1::/64"), true},
		{rtlab.Flavor2, "rl2", netip.MustParsePrefix("10.202.2.0/24"), netip.Prefix{}, false},
	} {
		t.Run("containerd-"+tc.flavor, func(t *testing.T) {
			t.Parallel()
			testFlavor(t, rtlab.Config{Flavor: tc.flavor, Prefix: tc.prefix, Subnet: tc.subnet, Subnet6: tc.subnet6}, tc.sweep)
		})
	}
}

func testFlavor(t *testing.T, cfg rtlab.Config, sweep bool) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if err := rtlab.Sweep(cfg.Prefix); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(t.TempDir(), "chain.jsonl")
	cfg.Chain = []rtlab.Plugin{{Type: chainType, Binary: self, Conf: map[string]any{
		"record":       record,
		"capabilities": map[string]any{"portMappings": true},
	}}}
	cfg.Log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	t0 := time.Now()
	lab, err := rtlab.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	t.Logf("lab up in %s", time.Since(t0).Round(time.Millisecond))
	mnt2, err := cgroup.Mount2()
	if err != nil {
		t.Fatal(err)
	}

	// Two pods with a TCP server each; a has a pod cgroup.
	a, ctrA := runServer(t, lab, "pod-a", true)
	b, ctrB := runServer(t, lab, "pod-b", false)
	for _, p := range []*rtlab.Pod{a, b} {
		if !cfg.Subnet.Contains(p.IP) {
			t.Errorf("pod %s: IP %s not in %s", p.Name, p.IP, cfg.Subnet)
		}
		if want := 1 + btoi(cfg.Subnet6.IsValid()); len(p.IPs) != want {
			t.Errorf("pod %s: IPs %v, want %d", p.Name, p.IPs, want)
		}
		if _, err := os.Stat(p.Netns); err != nil || !strings.HasPrefix(p.Netns, lab.Dir()+"/") {
			t.Errorf("pod %s: netns %q not under %s: %v", p.Name, p.Netns, lab.Dir(), err)
		}
	}
	expectReply(t, lab, ctrA, b.IP, "hello-from-pod-b")
	expectReply(t, lab, ctrB, a.IP, "hello-from-pod-a")
	if cfg.Subnet6.IsValid() {
		if !cfg.Subnet6.Contains(b.IPs[1]) {
			t.Fatalf("pod b: IPv6 %s not in %s", b.IPs[1], cfg.Subnet6)
		}
		expectReply(t, lab, ctrA, b.IPs[1], "hello-from-pod-b")
	}
	// The server logs what it got; containerd writes the log
	// asynchronously, so it may lag behind the reply. The client may also
	// not have sent its ping at all: busybox nc exits when the server's
	// reply and FIN arrive before it has read its own stdin. So ask again
	// while the log has none.
	for deadline, next := time.Now().Add(10*time.Second), time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		log, err := lab.ContainerLog(ctrB)
		if err == nil && strings.Contains(string(log), "ping") {
			break
		}
		if err != nil || time.Now().After(deadline) {
			t.Errorf("log of pod b's server: %q, %v; want the client's ping", log, err)
			break
		}
		if time.Now().After(next) {
			expectReply(t, lab, ctrA, b.IP, "hello-from-pod-b")
			next = time.Now().Add(time.Second)
		}
	}

	// The chained plugin ran after bridge, with the pod's annotations.
	var add *chainCall
	for _, c := range chainCalls(t, record) {
		if c.Command == "ADD" && c.Sandbox == a.ID {
			add = &c
		}
	}
	if add == nil {
		t.Fatalf("chained plugin: no ADD for pod a (%s)", a.ID)
	}
	var in struct {
		PrevResult struct {
			IPs []struct {
				Address string `json:"address"`
			} `json:"ips"`
		} `json:"prevResult"`
		RuntimeConfig map[string]map[string]string `json:"runtimeConfig"`
	}
	if err := json.Unmarshal(add.Stdin, &in); err != nil {
		t.Fatal(err)
	}
	if got := in.RuntimeConfig["io.kubernetes.cri.pod-annotations"]["patu.io/test"]; got != "yes" {
		t.Errorf("chained plugin: pod annotation patu.io/test = %q, want yes (stdin %s)", got, add.Stdin)
	}
	if len(in.PrevResult.IPs) == 0 || !strings.HasPrefix(in.PrevResult.IPs[0].Address, a.IP.String()+"/") {
		t.Errorf("chained plugin: prevResult IPs %v, want pod a's %s first", in.PrevResult.IPs, a.IP)
	}

	// The pod cgroup: cgroup v2 dir <parent>/<container id>, and ExecSync
	// runs there too.
	if a.CgroupParent == "" || b.CgroupParent != "" {
		t.Fatalf("cgroup parents: a %q, b %q (want none)", a.CgroupParent, b.CgroupParent)
	}
	if err := cgroup.IsCgroup2Dir(filepath.Join(mnt2, a.CgroupParent, ctrA)); err != nil {
		t.Errorf("pod a's container cgroup: %v", err)
	}
	out, _, _, err := lab.Exec(ctx, ctrA, 5*time.Second, "cat", "/proc/self/cgroup")
	if want := "0::" + a.CgroupParent + "/" + ctrA + "\n"; err != nil || !strings.Contains(string(out), want) {
		t.Errorf("exec in pod a: /proc/self/cgroup %q, %v; want line %q", out, err, want)
	}

	// crictl, configured and run inside the lab's netns: exec uses the
	// stream server there.
	if out, err := lab.Crictl(ctx, "exec", ctrA, "echo", "via-crictl"); err != nil || strings.TrimSpace(string(out)) != "via-crictl" {
		t.Errorf("crictl exec: %q, %v", out, err)
	}

	// A failing CNI ADD fails RunPod, with containerd's log in the error,
	// and leaves no pod behind (checked with crictl pods below).
	_, err = lab.RunPod(ctx, rtlab.PodSpec{Name: "pod-fail", Annotations: map[string]string{failAddAnnotation: "yes"}})
	t.Logf("RunPod failed as it should: %v", err)
	if err == nil || !strings.Contains(err.Error(), "failing ADD as the pod asked") || !strings.Contains(err.Error(), "containerd log") {
		t.Errorf("RunPod with a failing ADD: %v; want the plugin's message and containerd's log", err)
	}

	// Stop and remove a pod, twice: both are idempotent.
	for range 2 {
		if err := lab.StopPod(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		if err := lab.RemovePod(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := lab.Crictl(ctx, "pods", "-q"); err != nil || strings.TrimSpace(string(out)) != b.ID {
		t.Errorf("pods after removing a: %q, %v; want only %s", out, err, b.ID)
	}
	dels := 0
	for _, c := range chainCalls(t, record) {
		if c.Command == "DEL" && c.Sandbox == a.ID {
			dels++
		}
	}
	if dels == 0 {
		t.Errorf("chained plugin: no DEL for pod a")
	}
	if exists(filepath.Join(mnt2, a.CgroupParent)) {
		t.Errorf("pod a's cgroup %s left after RemovePod", a.CgroupParent)
	}

	// Restart containerd under the running pod b.
	t0 = time.Now()
	if err := lab.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart took %s", time.Since(t0).Round(time.Millisecond))
	if out, err := lab.Crictl(ctx, "inspectp", "-o", "go-template", "--template", "{{.status.state}}", b.ID); err != nil || strings.TrimSpace(string(out)) != "SANDBOX_READY" {
		t.Errorf("pod b after restart: %q, %v; want SANDBOX_READY", out, err)
	}
	if out, _, code, err := lab.Exec(ctx, ctrB, 5*time.Second, "echo", "still-here"); err != nil || code != 0 || string(out) != "still-here\n" {
		t.Errorf("exec after restart: %q, exit %d, %v", out, code, err)
	}

	// One more pod, then a containerd crash: Close must clean up after it.
	c, ctrC := runServer(t, lab, "pod-c", true)
	if err := lab.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	if sweep {
		// Only what is on disk and in /proc: no help from the Lab.
		if err := rtlab.Sweep(cfg.Prefix); err != nil {
			t.Fatalf("sweep after kill: %v", err)
		}
		t.Logf("sweep after kill took %s", time.Since(t0).Round(time.Millisecond))
	} else {
		if err := lab.Close(); err != nil {
			t.Fatalf("close after kill: %v", err)
		}
		t.Logf("close after kill took %s", time.Since(t0).Round(time.Millisecond))
	}
	// Close is safe to repeat, and after Sweep.
	if err := lab.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	assertGone(t, lab, cfg.Prefix, []*rtlab.Pod{a, b, c}, []string{ctrA, ctrB, ctrC})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// runServer starts a pod with a busybox nc server on port 8080 that answers
// every connection with "hello-from-<name>" and logs what it receives.
func runServer(t *testing.T, lab *rtlab.Lab, name string, podCgroup bool) (*rtlab.Pod, string) {
	t.Helper()
	t0 := time.Now()
	pod, err := lab.RunPod(t.Context(), rtlab.PodSpec{
		Name: name, Namespace: "rtlab-test", PodCgroup: podCgroup,
		Labels: map[string]string{"app": name}, Annotations: map[string]string{"patu.io/test": "yes"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := lab.StartContainer(t.Context(), pod, rtlab.ContainerSpec{
		Name:    "server",
		Command: []string{"sh", "-c", "while true; do echo hello-from-" + name + " | nc -l -p 8080; done"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pod %s %s %v netns %s cgroup %q: running after %s", name, pod.ID[:12], pod.IPs, pod.Netns, pod.CgroupParent,
		time.Since(t0).Round(time.Millisecond))
	return pod, ctr
}

// expectReply connects from the container ctr to addr:8080 until the server
// answers want; the server may not be listening yet.
func expectReply(t *testing.T, lab *rtlab.Lab, ctr string, addr netip.Addr, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, errOut, code, err := lab.Exec(t.Context(), ctr, 5*time.Second, "sh", "-c", "echo ping | nc -w 3 "+addr.String()+" 8080")
		if err != nil {
			t.Fatal(err)
		}
		if code == 0 && strings.TrimSpace(string(out)) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:8080 from %s: stdout %q stderr %q exit %d, want %q", addr, ctr[:12], out, errOut, code, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// assertGone checks that nothing of the lab is left: no netns, process,
// mount, directory, cgroup or libcni cache entry.
func assertGone(t *testing.T, lab *rtlab.Lab, prefix string, pods []*rtlab.Pod, ctrs []string) {
	t.Helper()
	ids := slices.Clone(ctrs)
	for _, p := range pods {
		ids = append(ids, p.ID)
	}
	if _, err := os.Lstat(netns.Path("patu-" + prefix)); !os.IsNotExist(err) {
		t.Errorf("netns patu-%s still there (%v)", prefix, err)
	}
	if _, err := os.Lstat(lab.Dir()); !os.IsNotExist(err) {
		t.Errorf("lab dir %s still there (%v)", lab.Dir(), err)
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err != nil {
		t.Error(err)
	} else if strings.Contains(string(mi), lab.Dir()) {
		t.Errorf("mounts under %s left:\n%s", lab.Dir(), mi)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), lab.Dir()) {
			pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
			t.Errorf("process %d left: %q", pid, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	for _, m := range cgroupMounts(t) {
		left := []string{filepath.Join(m, "patu-rtlab-"+prefix)}
		for _, id := range ids {
			// Containers without a pod cgroup have theirs under /k8s.io.
			left = append(left, filepath.Join(m, "k8s.io", id))
		}
		for _, cg := range left {
			if exists(cg) {
				t.Errorf("cgroup %s left", cg)
			}
		}
	}
	for _, id := range ids {
		// containerd 1.6's shim socket, named after the shim's id: the
		// sandbox's, or a container's.
		sum := sha256.Sum256([]byte(filepath.Join(lab.Socket(), "k8s.io", id)))
		if sock := "/run/containerd/s/" + hex.EncodeToString(sum[:]); exists(sock) {
			t.Errorf("shim socket of %s left: %s", id, sock)
		}
	}
	cache, _ := os.ReadDir("/var/lib/cni/results")
	for _, e := range cache {
		if strings.HasPrefix(e.Name(), "patu-"+prefix+"-") ||
			slices.ContainsFunc(pods, func(p *rtlab.Pod) bool { return strings.Contains(e.Name(), p.ID) }) {
			t.Errorf("libcni cache entry left: %s", e.Name())
		}
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// cgroupMounts returns the mount points of all cgroup hierarchies (v1 and
// v2): runc creates a container's cgroups in each.
func cgroupMounts(t *testing.T) []string {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var mnts []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		for i, x := range f {
			if x == "-" && i+1 < len(f) && (f[i+1] == "cgroup" || f[i+1] == "cgroup2") {
				mnts = append(mnts, f[4])
			}
		}
	}
	return mnts
}

// TestStartFailureRollsBack starts a lab whose containerd dies at once:
// Start must fail with containerd's output, and remove what it created.
func TestStartFailureRollsBack(t *testing.T) {
	testnet.Privileged(t)
	const prefix = "rlf"
	if err := rtlab.Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	tools := t.TempDir()
	bin2 := filepath.Join(tools, "bin2")
	if err := os.Mkdir(bin2, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if err := os.WriteFile(filepath.Join(bin2, b), []byte("#!/bin/sh\necho boom: no containerd today >&2\nexit 3\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lab, err := rtlab.Start(t.Context(), rtlab.Config{
		Flavor: rtlab.Flavor2, Prefix: prefix, Subnet: netip.MustParsePrefix("10.202.3.0/24"), Tools: tools,
	})
	if err == nil {
		lab.Close()
		t.Fatal("Start succeeded with a containerd that exits")
	}
	t.Logf("Start failed as it should: %v", err)
	if !strings.Contains(err.Error(), "exited during start-up") || !strings.Contains(err.Error(), "boom: no containerd today") {
		t.Errorf("error %q: want the exit and containerd's output", err)
	}
	if exists(netns.Path("patu-" + prefix)) {
		t.Errorf("netns patu-%s left after a failed Start", prefix)
	}
	if exists(filepath.Join(rtlab.BaseDir, prefix)) {
		t.Errorf("lab dir left after a failed Start")
	}
}

// BenchmarkPodChurn measures one pod's life cycle through CRI: RunPod,
// StartContainer, RemovePod (which stops it first).
func BenchmarkPodChurn(b *testing.B) {
	testnet.Privileged(b)
	for _, tc := range []struct {
		flavor, prefix string
		subnet         netip.Prefix
	}{
		{rtlab.Flavor16, "rlb16", netip.MustParsePrefix("10.202.4.0/24")},
		{rtlab.Flavor2, "rlb2", netip.MustParsePrefix("10.202.5.0/24")},
	} {
		b.Run("containerd-"+tc.flavor, func(b *testing.B) {
			if err := rtlab.Sweep(tc.prefix); err != nil {
				b.Fatal(err)
			}
			lab, err := rtlab.Start(b.Context(), rtlab.Config{Flavor: tc.flavor, Prefix: tc.prefix, Subnet: tc.subnet})
			if err != nil {
				b.Fatal(err)
			}
			defer func() {
				if err := lab.Close(); err != nil {
					b.Error(err)
				}
			}()
			i := 0
			for b.Loop() {
				pod, err := lab.RunPod(b.Context(), rtlab.PodSpec{Name: fmt.Sprintf("churn-%d", i), PodCgroup: true})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := lab.StartContainer(b.Context(), pod, rtlab.ContainerSpec{Name: "sleep", Command: []string{"sleep", "3600"}}); err != nil {
					b.Fatal(err)
				}
				if err := lab.RemovePod(b.Context(), pod.ID); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
