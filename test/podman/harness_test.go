package podman

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/deploy"
	"github.com/patu-dev/patu/hook"
	"github.com/patu-dev/patu/install"
	"github.com/patu-dev/patu/internal/logtail"
	"github.com/patu-dev/patu/internal/mountinfo"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/netns"
)

// Names no other test uses: the netns podman runs in, the pin directory,
// the containers' cgroup parent, the default network's subnet and the
// prefix of the temporary directories.
const (
	netnsName    = "patu-pm-e2e"
	pinDir       = "/sys/fs/bpf/patu-e2e-podman"
	cgroupParent = "/patu-pm-e2e"
	subnet       = "10.211.0.0/24"
	dirPrefix    = "patu-pm-"
	// markerFile in a run's directory names the process and what the run
	// found absent outside it, for the sweep of a run that died.
	markerFile = "patu-pm-e2e.json"
)

// Paths podman writes outside its configured directories. Each is removed
// at the end only when it did not exist at the start (directories: only
// when empty), so another podman on the host keeps its own.
var outside = []string{
	"/run/containers/networks/ipam.db",
	"/var/lib/containers/cache/blob-info-cache-v1.boltdb",
	"/run/containers/networks",
	"/run/containers",
	"/var/lib/containers/cache",
	"/var/lib/containers",
	"/run/runc",
}

// Binaries built once by TestMain.
var bins struct{ patu, peer string }

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Getenv("PATU_SKIP_PRIVILEGED") == "1" {
		fmt.Println("podman: PATU_SKIP_PRIVILEGED=1, podman e2e tests skip")
		return m.Run()
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "podman e2e tests need root (podman, netns, cgroups, BPF); run as root or set PATU_SKIP_PRIVILEGED=1 to skip them")
		return 1
	}
	dir, err := os.MkdirTemp("", dirPrefix+"bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// The marker lets the next run's sweep remove the binaries of a run
	// that was killed.
	b, _ := json.Marshal(marker{Pid: os.Getpid()})
	if err := os.WriteFile(filepath.Join(dir, markerFile), b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bins.patu, bins.peer = filepath.Join(dir, "patu"), filepath.Join(dir, "patu-testpeer")
	for out, pkg := range map[string]string{bins.patu: "cmd/patu", bins.peer: "test/peer"} {
		// Static: patu-testpeer runs inside the busybox image, and patu is
		// what `make build` ships.
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/patu-dev/patu/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			return 1
		}
	}
	return m.Run()
}

// env is a private podman: its configuration, storage and hooks under dir,
// its network in the netns netnsName. Its methods fail t; a subtest uses
// e.with(t).
type env struct {
	t *testing.T
	*shared
}

type shared struct {
	top      *testing.T // the test that owns the env
	dir      string
	conf     string // containers.conf with the hooks
	bareConf string // the same without hooks_dir: podman without Patu
	storage  string
	stateDir string // patu hook --state-dir
	nsPath   string

	mu       sync.Mutex
	datapath *bpf.Datapath
}

// with returns the env failing t instead.
func (e *env) with(t *testing.T) *env { return &env{t: t, shared: e.shared} }

type marker struct {
	Pid    int      `json:"pid"`
	Absent []string `json:"absent"`
}

// newEnv sweeps what a dead run left, then writes the configuration,
// creates the netns, loads the images and Patu. Everything goes again
// when the test ends, whether it passed or not.
func newEnv(t *testing.T) *env {
	t.Helper()
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman not found: run hack/podman-deps.sh (apt-get install podman): %v", err)
	}
	if err := sweep(); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, shared: &shared{top: t, dir: dir, stateDir: filepath.Join(dir, "state")}}
	mk := marker{Pid: os.Getpid()}
	for _, p := range outside {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			mk.Absent = append(mk.Absent, p)
		}
	}
	b, _ := json.Marshal(mk)
	if err := os.WriteFile(filepath.Join(dir, markerFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := teardown(dir); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	if e.nsPath, err = netns.Create(netnsName); err != nil {
		t.Fatal(err)
	}
	if err := netns.Do(e.nsPath, func() error { return exec.Command("ip", "link", "set", "lo", "up").Run() }); err != nil {
		t.Fatal(err)
	}
	e.writeConfig()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	imgs, err := rtlab.BuildImages(ctx, "", map[string]string{"/bin/patu-testpeer": bins.peer})
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{imgs.Pause, imgs.Workload} {
		e.podman(ctx, "load", "-i", img)
	}
	return e
}

// writeConfig writes containers.conf (twice: with and without the hooks),
// storage.conf and the hooks.d files.
func (e *env) writeConfig() {
	t := e.t
	d := func(name string) string {
		p := filepath.Join(e.dir, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hooks, noHooks := d("hooks.d"), d("hooks-none.d")
	conf := func(hooksDir string) string {
		return fmt.Sprintf(`[containers]
log_driver = "k8s-file"
# The test machines' hard limit is nofile=20000 and runc cannot raise it
# (no CAP_SYS_RESOURCE): podman's default of 1048576 fails.
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
volume_path = %q
static_dir = %q
hooks_dir = [%q]
runtime = "runc"

[network]
network_backend = "netavark"
network_config_dir = %q
default_subnet = %q
`, filepath.Join(e.dir, "events.log"), d("tmp"), d("volumes"), filepath.Join(d("root"), "libpod"), hooksDir, d("networks"), subnet)
	}
	e.conf, e.bareConf = filepath.Join(e.dir, "containers.conf"), filepath.Join(e.dir, "containers-bare.conf")
	e.storage = filepath.Join(e.dir, "storage.conf")
	files := map[string]string{
		e.conf:     conf(hooks),
		e.bareConf: conf(noHooks),
		e.storage:  fmt.Sprintf("[storage]\ndriver = \"overlay\"\nrunroot = %q\ngraphroot = %q\n", d("runroot"), d("root")),
	}
	// The shipped hooks.d files, pointed at this build and its pin dir.
	for _, name := range install.HookNames {
		b, err := deploy.Files.ReadFile(install.ProfilePodman + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		var h map[string]any
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatal(err)
		}
		spec := h["hook"].(map[string]any)
		args := spec["args"].([]any)
		spec["path"] = bins.patu
		spec["args"] = []any{args[0], "--bpffs", pinDir, args[1], "--state-dir", e.stateDir, args[2]}
		out, _ := json.MarshalIndent(h, "", "  ")
		files[filepath.Join(hooks, name)] = string(out)
	}
	for p, s := range files {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// podman runs podman with the hooks and fails the test on error.
func (e *env) podman(ctx context.Context, args ...string) string {
	e.t.Helper()
	out, err := e.tryPodman(ctx, e.conf, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// tryPodman runs podman with the configuration conf inside the netns and
// returns its trimmed stdout.
func (e *env) tryPodman(ctx context.Context, conf string, args ...string) (string, error) {
	return runPodman(ctx, e.dir, conf, args...)
}

func runPodman(ctx context.Context, dir, conf string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netns.Path(netnsName), "podman"}, args...)...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+conf, "CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("podman %s: %v\n%s", strings.Join(args, " "), err, logtail.Lines(stderr.Bytes(), 20))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// run starts a detached container and returns its id. Flags come before
// the image; cmd after it.
func (e *env) run(ctx context.Context, flags []string, cmd ...string) string {
	e.t.Helper()
	id, err := e.tryRun(ctx, e.conf, flags, cmd...)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) tryRun(ctx context.Context, conf string, flags []string, cmd ...string) (string, error) {
	args := []string{"run", "-d", "--pull=never"}
	if !slices.ContainsFunc(flags, func(f string) bool { return strings.HasPrefix(f, "--pod") }) {
		// A pod's containers live in the pod's cgroup parent.
		args = append(args, "--cgroup-parent="+cgroupParent)
	}
	args = append(append(append(args, flags...), rtlab.WorkloadImage), cmd...)
	return e.tryPodman(ctx, conf, args...)
}

// pod creates a pod with the lab's pause image as its infra container and
// returns the infra container's id.
func (e *env) pod(ctx context.Context, name string) string {
	e.t.Helper()
	e.podman(ctx, "pod", "create", "--name", name, "--cgroup-parent="+cgroupParent, "--infra-image", rtlab.PauseImage)
	// The infra container starts with the pod's first container; start it
	// now so its record exists before the app's.
	e.podman(ctx, "pod", "start", name)
	return e.podman(ctx, "pod", "inspect", name, "--format", "{{.InfraContainerID}}")
}

// serverCmd runs a sink server that writes /tmp/ready once it listens.
var serverCmd = []string{"/bin/patu-testpeer", "serve", "--listen", "[::]:8080", "--mode", "sink", "--ready-file", "/tmp/ready"}

// server starts a sink server container and waits until it listens.
func (e *env) server(ctx context.Context, flags ...string) string {
	e.t.Helper()
	id := e.run(ctx, flags, serverCmd...)
	e.waitReady(ctx, id)
	return id
}

func (e *env) waitReady(ctx context.Context, id string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := e.tryPodman(ctx, e.conf, "exec", id, "cat", "/tmp/ready"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("server %s not ready after 20s", id[:12])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *env) ip(ctx context.Context, id string) netip.Addr {
	e.t.Helper()
	s := e.podman(ctx, "inspect", id, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
	if s == "" {
		// A pod member: its address is its infra container's.
		infra := e.podman(ctx, "inspect", id, "--format", "{{.Pod}}")
		s = e.podman(ctx, "pod", "inspect", infra, "--format", "{{.InfraContainerID}}")
		s = e.podman(ctx, "inspect", s, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
	}
	ip, err := netip.ParseAddr(strings.Fields(s)[0])
	if err != nil {
		e.t.Fatalf("address of %s: %q: %v", id[:12], s, err)
	}
	return ip
}

// client runs patu-testpeer client in container id and returns its result.
func (e *env) client(ctx context.Context, id string, args ...string) peerresult.Result {
	e.t.Helper()
	out, err := e.tryPodman(ctx, e.conf, append([]string{"exec", id, "/bin/patu-testpeer", "client"}, args...)...)
	res, perr := peerresult.Parse([]byte(out))
	if err != nil || perr != nil || res.Failed > 0 {
		e.t.Fatalf("client in %s: %v, result %+v (%v)", id[:12], err, res, perr)
	}
	return res
}

// dp returns the pinned maps, opened once Patu is loaded and closed before
// the teardown unloads it. Safe for concurrent use.
func (e *env) dp() *bpf.Datapath {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.datapath == nil {
		dp, err := bpf.Open(pinDir)
		if err != nil {
			e.t.Fatal(err)
		}
		e.datapath = dp
		e.top.Cleanup(func() { dp.Close() })
	}
	return e.datapath
}

// carried is what Patu's fast paths carried so far (bpf.CarriedBytes).
func (e *env) carried() uint64 {
	e.t.Helper()
	b, err := e.dp().CarriedBytes()
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// local returns the local packet path's counters.
func (e *env) local() bpf.LocalCounters {
	e.t.Helper()
	c, err := e.dp().LocalCounters()
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) record(id string) bpf.Pod {
	e.t.Helper()
	p, err := e.dp().LookupPod(id)
	if err != nil {
		e.t.Fatalf("record of %s: %v", id[:12], err)
	}
	return p
}

// failures returns how often patu hook failed so far.
func (e *env) failures() hook.Failures {
	e.t.Helper()
	f, err := hook.ReadFailures(e.stateDir)
	if err != nil {
		e.t.Fatal(err)
	}
	return f
}

// leftovers lists what Patu still holds of the given containers: records,
// endpoints, attached cgroups (by id).
func (e *env) leftovers(ids []string, ips []netip.Addr, cgroups []uint64) []string {
	e.t.Helper()
	dp := e.dp()
	var left []string
	for _, id := range ids {
		if _, err := dp.LookupPod(id); err == nil {
			left = append(left, "record "+id[:12])
		}
	}
	eps, _ := dp.Endpoints()
	for _, ep := range eps {
		if slices.Contains(ips, ep.IP) {
			left = append(left, "endpoint "+ep.IP.String())
		}
	}
	for _, cg := range cgroups {
		if dp.IsAttached(cg) {
			left = append(left, fmt.Sprint("cgroup ", cg))
		}
	}
	return left
}

// assertGone waits until Patu holds nothing of the given containers:
// podman may run a container's cleanup, and so its poststop hook, in the
// conmon exit command rather than in the command that stopped it.
func (e *env) assertGone(ids []string, ips []netip.Addr, cgroups []uint64) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := e.leftovers(ids, ips, cgroups)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("left behind: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// teardown removes a run's containers, pods, images, mounts, cgroups,
// netns, pins and directory, and what podman wrote outside it that was
// not there before. It works on the directory of a run that died as well.
func teardown(dir string) error {
	var errs []error
	var mk marker
	if b, err := os.ReadFile(filepath.Join(dir, markerFile)); err == nil {
		json.Unmarshal(b, &mk)
	}
	conf := filepath.Join(dir, "containers.conf")
	if _, err := os.Stat(conf); err == nil {
		// podman tears the containers' networks down in the netns it runs
		// in: never in the host's.
		if _, err := os.Stat(netns.Path(netnsName)); err != nil {
			if _, err := netns.Create(netnsName); err != nil {
				errs = append(errs, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		// The netns and runc state of each container, in case podman
		// leaves them (a container whose cleanup never ran).
		var leftNetns, ids []string
		if out, err := runPodman(ctx, dir, conf, "ps", "-a", "--format", "{{.ID}}", "--no-trunc"); err == nil {
			ids = strings.Fields(out)
		}
		for _, id := range ids {
			if out, err := runPodman(ctx, dir, conf, "inspect", id, "--format", "{{.NetworkSettings.SandboxKey}}"); err == nil && strings.HasPrefix(out, netns.RunDir+"/netns-") {
				leftNetns = append(leftNetns, filepath.Base(out))
			}
		}
		for _, args := range [][]string{{"pod", "rm", "-a", "-f", "-t", "0"}, {"rm", "-a", "-f", "-t", "0"}, {"rmi", "-a", "-f"}} {
			if _, err := runPodman(ctx, dir, conf, args...); err != nil {
				errs = append(errs, err)
			}
		}
		for _, n := range leftNetns {
			if err := netns.Delete(n); err != nil {
				errs = append(errs, err)
			}
		}
		for _, id := range ids {
			os.RemoveAll(filepath.Join("/run/runc", id))
		}
	}
	// containers/storage bind-mounts its overlay directory onto itself,
	// and a dead run leaves container mounts: deepest first.
	if mounts, err := mountinfo.Read(); err == nil {
		var under []string
		for _, m := range mounts {
			if strings.HasPrefix(m.Point, dir+"/") {
				under = append(under, m.Point)
			}
		}
		sort.Sort(sort.Reverse(sort.StringSlice(under)))
		for _, p := range under {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			}
		}
	}
	if err := removeCgroupParent(); err != nil {
		errs = append(errs, err)
	}
	if err := netns.Delete(netnsName); err != nil {
		errs = append(errs, err)
	}
	if _, err := bpf.Unload(pinDir); err != nil {
		errs = append(errs, err)
	}
	// Files first, then directories, as listed; a directory only when
	// empty.
	for _, p := range mk.Absent {
		if st, err := os.Lstat(p); err == nil && !st.IsDir() {
			os.Remove(p)
		}
	}
	for _, p := range mk.Absent {
		os.Remove(p)
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeCgroupParent removes cgroupParent from every hierarchy: cgroupfs
// makes it in each cgroup v1 controller and in the v2 one. Processes left
// in it (a run that died) are killed first.
func removeCgroupParent() error {
	var errs []error
	if mnt, err := cgroup.Mount2(); err == nil {
		dir := filepath.Join(mnt, cgroupParent)
		killTree(dir)
		if err := cgroup.Remove(dir); err != nil {
			errs = append(errs, err)
		}
	}
	v1, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", cgroupParent))
	for _, dir := range v1 {
		if err := cgroup.IsCgroup2Dir(dir); err == nil {
			continue // done above
		}
		// Deepest first; a cgroup directory goes with rmdir alone.
		var dirs []string
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// killTree kills every process in the cgroup v2 tree at dir.
func killTree(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		pids, _ := cgroup.Procs(p)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond)
}

// sweep tears down what runs that died left behind, and refuses to run
// beside a live one: the netns, pin dir and subnet are fixed.
func sweep() error {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	var errs []error
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, markerFile))
		if err != nil {
			continue // not ours, or a run that died before it wrote one
		}
		var mk marker
		json.Unmarshal(b, &mk)
		if mk.Pid == os.Getpid() {
			continue // this run's binaries
		}
		if mk.Pid > 0 && syscall.Kill(mk.Pid, 0) == nil {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", mk.Pid)); strings.HasSuffix(exe, ".test") {
				return fmt.Errorf("another podman e2e run (pid %d, %s) is in progress: the netns %s and pin dir %s are fixed", mk.Pid, dir, netnsName, pinDir)
			}
		}
		if err := teardown(dir); err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", dir, err))
		}
	}
	// Without a directory: a netns, pins or cgroups of a run that died
	// before it wrote its marker.
	if err := removeCgroupParent(); err != nil {
		errs = append(errs, err)
	}
	netns.Delete(netnsName)
	if _, err := bpf.Unload(pinDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// percentile returns the p-th percentile (0-100) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
}
