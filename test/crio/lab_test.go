package crio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/logtail"
	"github.com/patu-dev/patu/internal/mountinfo"
	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/netns"
)

// The lab's names. They are unique on the machine (other tests use other
// namespaces, subnets and pin directories), so only one lab runs at a time.
const (
	labDir     = "/tmp/crio-lab"
	netnsName  = "patu-crio"
	bridgeName = "crbr0"
	subnet     = "10.212.0.0/24"
	cgroupRoot = "/patu-crio" // pods' cgroup_parent is cgroupRoot/<pod name>
	pinDir     = "/sys/fs/bpf/patu-e2e-crio"
	podNS      = "crio" // Kubernetes namespace of the lab's pods
)

// The registry listens on the loopback of the lab's network namespace,
// where CRI-O pulls from: no port of the host is used.
const (
	registryAddr  = "127.0.0.1:5000"
	registryHost  = "localhost:5000"
	pauseImage    = registryHost + "/patu/pause:3.9"
	workloadImage = registryHost + "/patu/workload:latest"
)

// Paths inside labDir.
var (
	sockPath  = filepath.Join(labDir, "crio.sock")
	confPath  = filepath.Join(labDir, "crio.conf")
	logPath   = filepath.Join(labDir, "crio.log")
	runcRoot  = filepath.Join(labDir, "runc")
	cniConf   = filepath.Join(labDir, "cni", "net.d")
	cniBin    = filepath.Join(labDir, "cni", "bin")
	cniIPAM   = filepath.Join(labDir, "cni", "ipam")
	nsPinDir  = filepath.Join(labDir, "run", "ns") // CRI-O's namespaces_dir
	hooksDir  = filepath.Join(labDir, "hooks.d")
	policyDoc = filepath.Join(labDir, "policy.json")
	// hookStateDir is patu hook's --state-dir (its failure counts).
	hookStateDir = filepath.Join(labDir, "hook-state")
)

// crioConfig is CRI-O's configuration (the only file it reads: the lab
// passes --config-dir ""). Every path is under labDir. Beyond paths:
//   - cgroup_manager cgroupfs and conmon_cgroup "pod": no systemd here;
//   - enable_pod_events: without it GetContainerEvents ends at once (the
//     no-pod-events subtest restarts CRI-O with it off);
//   - drop_infra_ctr stays at its default (true): pods whose containers
//     have their own PID namespace, kubelet's default, get no pause
//     process. (A pod-level PID namespace needs one, and its
//     oom_score_adj of -998 fails without CAP_SYS_RESOURCE, as with
//     containerd; CRI-O has no restrict_oom_score_adj.)
//   - the pause image is pulled from the lab's registry like any image.
var crioConfig = template.Must(template.New("crio").Parse(`[crio]
root = "{{.Dir}}/root"
runroot = "{{.Dir}}/runroot"
storage_driver = "overlay"
log_dir = "{{.Dir}}/pods"
version_file = "{{.Dir}}/run/version"
version_file_persist = "{{.Dir}}/lib/version"
clean_shutdown_file = "{{.Dir}}/lib/clean.shutdown"

[crio.api]
listen = "{{.Sock}}"
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "runc"
conmon_cgroup = "pod"
cgroup_manager = "cgroupfs"
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
container_exits_dir = "{{.Dir}}/run/exits"
container_attach_socket_dir = "{{.Dir}}/run/attach"
namespaces_dir = "{{.NsDir}}"
pinns_path = "{{.Pinns}}"
enable_pod_events = {{.PodEvents}}
hooks_dir = ["{{.Hooks}}"]
default_mounts_file = ""
cdi_spec_dirs = []
irqbalance_config_file = ""
irqbalance_config_restore_file = ""

[crio.runtime.runtimes.runc]
runtime_path = "{{.Runc}}"
runtime_type = "oci"
runtime_root = "{{.RuncRoot}}"
monitor_path = "{{.Conmon}}"
monitor_cgroup = "pod"

[crio.image]
pause_image = "{{.Pause}}"
signature_policy = "{{.Policy}}"
insecure_registries = ["{{.Registry}}"]

[crio.network]
network_dir = "{{.CNIConf}}"
plugin_dirs = ["{{.CNIBin}}"]

[crio.metrics]
enable_metrics = false

[crio.nri]
enable_nri = false
`))

// conflist is the pods' network: bridge (the gateway, no NAT) with
// host-local addresses, as in internal/rtlab.
const conflist = `{
  "cniVersion": "1.0.0",
  "name": "patu-crio",
  "plugins": [
    {"type": "bridge", "bridge": "` + bridgeName + `", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "IPAM", "ranges": [[{"subnet": "` + subnet + `"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}
`

// lab is a CRI-O running in the network namespace patu-crio.
type lab struct {
	t      testing.TB
	crio   *exec.Cmd
	exited chan struct{}
	conn   *grpc.ClientConn
	rt     runtimeapi.RuntimeServiceClient
	img    runtimeapi.ImageServiceClient
	nsPath string
}

// startLab sweeps leftovers of an earlier run, writes the configuration,
// starts the registry and CRI-O, and pulls the two images. Everything is
// removed when the test ends.
func startLab(t *testing.T) *lab {
	t.Helper()
	t0 := time.Now()
	if err := sweep(); err != nil {
		t.Fatalf("sweep an earlier lab: %v", err)
	}
	l := &lab{t: t}
	t.Cleanup(l.close)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	imgs, err := rtlab.BuildImages(ctx, "", map[string]string{"/bin/patu-testpeer": bins.peer})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{cniConf, cniBin, cniIPAM, hooksDir, filepath.Join(labDir, "pods")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeConfig(); err != nil {
		t.Fatal(err)
	}
	if l.nsPath, err = netns.Create(netnsName); err != nil {
		t.Fatal(err)
	}
	if err := netns.Do(l.nsPath, func() error { return exec.Command("ip", "link", "set", "lo", "up").Run() }); err != nil {
		t.Fatalf("lo up in %s: %v", netnsName, err)
	}
	reg, err := serveRegistry(l.nsPath, registryAddr, imgs.Pause, imgs.Workload)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	if err := l.startCRIO(ctx); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	for _, ref := range []string{pauseImage, workloadImage} {
		if _, err := l.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			t.Fatalf("pull %s: %v\n%s", ref, err, l.logTail())
		}
	}
	t.Logf("lab ready in %v (images pulled in %v)", time.Since(t0).Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	return l
}

func writeConfig() error {
	if err := writeCRIOConfig(true); err != nil {
		return err
	}
	files := map[string]string{
		filepath.Join(hooksDir, "patu-createruntime.json"): hookFile("createRuntime"),
		filepath.Join(hooksDir, "patu-poststop.json"):      hookFile("poststop"),
		policyDoc: `{"default":[{"type":"insecureAcceptAnything"}]}` + "\n",
		filepath.Join(cniConf, "10-patu-crio.conflist"): strings.Replace(conflist, "IPAM", cniIPAM, 1),
	}
	for p, data := range files {
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return err
		}
	}
	// A farm of symlinks, as in rtlab: /usr/lib/cni stays untouched.
	entries, err := os.ReadDir("/usr/lib/cni")
	if err != nil {
		return fmt.Errorf("CNI plugins (apt-get install containernetworking-plugins): %w", err)
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join("/usr/lib/cni", e.Name()), filepath.Join(cniBin, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// writeCRIOConfig writes crio.conf, with GetContainerEvents served or not.
func writeCRIOConfig(podEvents bool) error {
	var buf bytes.Buffer
	err := crioConfig.Execute(&buf, map[string]string{
		"PodEvents": strconv.FormatBool(podEvents),
		"Dir":       labDir, "Sock": sockPath, "NsDir": nsPinDir, "Pinns": bins.pinns, "Hooks": hooksDir,
		"Runc": bins.runc, "RuncRoot": runcRoot, "Conmon": bins.conmon, "Pause": pauseImage,
		"Policy": policyDoc, "Registry": registryHost, "CNIConf": cniConf, "CNIBin": cniBin,
	})
	if err != nil {
		return err
	}
	return os.WriteFile(confPath, buf.Bytes(), 0o644)
}

// hookAnnotation gates the lab's OCI hooks: only pods carrying it run
// `patu hook`, so the daemon's pods are the daemon's alone. CRI-O copies a
// pod's annotations into each container's spec, where hooks.d "when"
// conditions look.
const hookAnnotation = "patu.io/hook-test"

// hookFile is a hooks.d file running this build's `patu hook` at stage
// (as deploy/podman's files do, with the lab's pin and state directories).
func hookFile(stage string) string {
	h := map[string]any{
		"version": "1.0.0",
		"hook": map[string]any{
			"path": bins.patu,
			"args": []string{"patu", "--bpffs", pinDir, "hook", "--state-dir", hookStateDir, stage},
		},
		"when":   map[string]any{"annotations": map[string]string{"^" + regexp.QuoteMeta(hookAnnotation) + "$": "^true$"}},
		"stages": []string{stage},
	}
	b, _ := json.MarshalIndent(h, "", "  ")
	return string(b) + "\n"
}

// startCRIO runs crio in the lab's namespace and waits until it answers
// CRI Version and reports its network ready.
func (l *lab) startCRIO(ctx context.Context) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// nsenter execs crio, which keeps the parent-death signal: a crashed
	// test does not leave CRI-O running (its containers are swept).
	cmd := exec.Command("nsenter", "--net="+l.nsPath, bins.crio, "--config", confPath, "--config-dir", "", "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start crio: %w", err)
	}
	l.crio = cmd
	l.exited = make(chan struct{})
	go func() { cmd.Wait(); close(l.exited) }()

	l.conn, err = grpc.NewClient("unix://"+sockPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	l.rt = runtimeapi.NewRuntimeServiceClient(l.conn)
	l.img = runtimeapi.NewImageServiceClient(l.conn)
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-l.exited:
			return fmt.Errorf("crio exited during start-up:\n%s", l.logTail())
		default:
		}
		if _, err := os.Stat(sockPath); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := l.rt.Status(cctx, &runtimeapi.StatusRequest{})
			cancel()
			if err == nil && conditionsOK(st) {
				l.t.Logf("crio ready in %v", time.Since(t0).Round(time.Millisecond))
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("crio not ready after 60s:\n%s", l.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restartCRIO stops CRI-O (its containers keep running, as on a node) and
// starts it again with pod events served or not.
func (l *lab) restartCRIO(ctx context.Context, podEvents bool) error {
	l.conn.Close()
	l.crio.Process.Signal(syscall.SIGTERM)
	select {
	case <-l.exited:
	case <-time.After(15 * time.Second):
		l.crio.Process.Kill()
		<-l.exited
	}
	if err := writeCRIOConfig(podEvents); err != nil {
		return err
	}
	return l.startCRIO(ctx)
}

func conditionsOK(st *runtimeapi.StatusResponse) bool {
	for _, c := range st.GetStatus().GetConditions() {
		if (c.GetType() == runtimeapi.RuntimeReady || c.GetType() == runtimeapi.NetworkReady) && !c.GetStatus() {
			return false
		}
	}
	return true
}

func (l *lab) logTail() string {
	b, _ := os.ReadFile(logPath)
	return logtail.Lines(b, 30)
}

// close removes the pods through CRI (so CNI DEL runs), stops CRI-O and
// sweeps what is left.
func (l *lab) close() {
	if l.rt != nil && l.crio != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if resp, err := l.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range resp.GetItems() {
				l.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.GetId()})
				l.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.GetId()})
			}
		}
		cancel()
	}
	if l.conn != nil {
		l.conn.Close()
	}
	if l.crio != nil {
		l.crio.Process.Signal(syscall.SIGTERM)
		select {
		case <-l.exited:
		case <-time.After(15 * time.Second):
			l.crio.Process.Kill()
			<-l.exited
		}
	}
	if l.t.Failed() || os.Getenv("PATU_E2E_LOG") == "1" {
		l.t.Logf("crio log (tail):\n%s", l.logTail())
	}
	if err := sweep(); err != nil {
		l.t.Errorf("sweep lab: %v", err)
	}
}

// sweep removes everything a lab leaves when its process dies: CRI-O,
// conmon and container processes, mounts under labDir (overlay, shm, the
// pinned namespaces), the network namespace, the pods' cgroups and labDir.
// It also runs after a clean close, which leaves only empty cgroup
// directories.
func sweep() error {
	var errs []error
	// Processes: crio and conmon carry labDir in their command line; the
	// containers are in runc's state under runcRoot.
	if ids, err := runcList(); err == nil {
		for _, id := range ids {
			exec.Command(bins.runc, "--root", runcRoot, "kill", id, "KILL").Run()
		}
	}
	for _, pid := range pidsWithArg(labDir) {
		unix.Kill(pid, unix.SIGKILL)
	}
	if ids, err := runcList(); err == nil {
		for _, id := range ids {
			if out, err := exec.Command(bins.runc, "--root", runcRoot, "delete", "--force", id).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("runc delete %s: %v: %s", id, err, out))
			}
		}
	}
	waitGone(pidsWithArg(labDir), 5*time.Second)

	// Mounts, deepest first.
	mounts, err := mountinfo.Read()
	if err != nil {
		errs = append(errs, err)
	}
	var points []string
	for _, m := range mounts {
		if m.Point == labDir || strings.HasPrefix(m.Point, labDir+"/") {
			points = append(points, m.Point)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	if err := netns.Delete(netnsName); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(labDir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func runcList() ([]string, error) {
	if _, err := os.Stat(runcRoot); err != nil {
		return nil, err
	}
	out, err := exec.Command(bins.runc, "--root", runcRoot, "list", "-q").Output()
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

// pidsWithArg lists the processes with an argument naming dir or a path
// under it.
func pidsWithArg(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			a := string(arg)
			if a == dir || strings.HasPrefix(a, dir+"/") || strings.Contains(a, "="+dir+"/") {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func waitGone(pids []int, d time.Duration) {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		alive := false
		for _, p := range pids {
			if unix.Kill(p, 0) == nil {
				alive = true
			}
		}
		if !alive {
			return
		}
	}
}

// removeCgroups removes cgroupRoot from every hierarchy: runc creates the
// pods' cgroups in each cgroup v1 controller and in the unified tree.
func removeCgroups() error {
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if m.FSType != "cgroup" && m.FSType != "cgroup2" {
			continue
		}
		dir := filepath.Join(m.Point, cgroupRoot)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if m.FSType == "cgroup2" {
			if err := cgroup.Remove(dir); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		// v1: directories only, deepest first; the processes are gone.
		var dirs []string
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// pod is a pod sandbox with one container.
type pod struct {
	name, id, ctr string
	ip            string
}

// runPod runs a pod as kubelet does by default (each container its own
// PID namespace, so CRI-O starts no pause process) with one workload
// container running cmd. Its cgroup_parent is cgroupRoot/<name>.
func (l *lab) runPod(t testing.TB, ctx context.Context, name string, ann map[string]string, cmd ...string) *pod {
	t.Helper()
	nsOpts := &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: podNS},
		Hostname:     name,
		LogDirectory: filepath.Join(labDir, "pods", name),
		Annotations:  ann,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    cgroupRoot + "/" + name,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: nsOpts},
		},
	}
	sb, err := l.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("run pod %s: %v", name, err)
	}
	p := &pod{name: name, id: sb.GetPodSandboxId()}
	cc := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
		// CRI-O refuses a container without the image as the user gave it
		// ("cannot verify image signature"); kubelet and crictl send it.
		Image:   &runtimeapi.ImageSpec{Image: workloadImage, UserSpecifiedImage: workloadImage},
		Command: cmd,
		LogPath: "main.log",
		Linux: &runtimeapi.LinuxContainerConfig{
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: nsOpts},
		},
	}
	ctr, err := l.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.id, Config: cc, SandboxConfig: cfg})
	if err != nil {
		t.Fatalf("create container in %s: %v", name, err)
	}
	p.ctr = ctr.GetContainerId()
	if _, err := l.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.ctr}); err != nil {
		t.Fatalf("start container in %s: %v", name, err)
	}
	st, err := l.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	p.ip = st.GetStatus().GetNetwork().GetIp()
	if p.ip == "" {
		t.Fatalf("pod %s has no IP", name)
	}
	return p
}

// removePod does what kubelet does when a pod is deleted: stop the
// container, stop the sandbox, remove both.
func (l *lab) removePod(t testing.TB, ctx context.Context, p *pod) {
	t.Helper()
	if _, err := l.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: p.ctr, Timeout: 1}); err != nil {
		t.Fatalf("stop container of %s: %v", p.name, err)
	}
	if _, err := l.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("stop pod %s: %v", p.name, err)
	}
	if _, err := l.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: p.ctr}); err != nil {
		t.Fatalf("remove container of %s: %v", p.name, err)
	}
	if _, err := l.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("remove pod %s: %v", p.name, err)
	}
}

// exec runs a command in the container through ExecSync: runc exec, in the
// container's cgroup, so Patu's sockops see its sockets.
func (l *lab) exec(ctx context.Context, ctr string, timeout time.Duration, cmd ...string) (stdout, stderr []byte, code int32, err error) {
	resp, err := l.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: ctr, Cmd: cmd, Timeout: int64(timeout / time.Second)})
	if err != nil {
		return nil, nil, -1, err
	}
	return resp.GetStdout(), resp.GetStderr(), resp.GetExitCode(), nil
}
