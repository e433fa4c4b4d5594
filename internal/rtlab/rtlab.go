package rtlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/netns"
)

// Flavors of containerd a lab can run.
const (
	// Flavor16 is Debian's containerd 1.6 (/usr/bin/containerd, its ctr
	// and its shim).
	Flavor16 = "1.6"
	// Flavor2 is containerd v2.4.2 from <Tools>/bin2, installed by
	// hack/e2e-deps.sh.
	Flavor2 = "2"
)

// DefaultTools is the tools directory when neither Config.Tools nor
// $PATU_TOOLS names one.
const DefaultTools = "/var/cache/patu-e2e"

// Timeouts of the daemon's life cycle.
const (
	readyTimeout = 30 * time.Second // start until CRI reports ready
	stopTimeout  = 15 * time.Second // SIGTERM until SIGKILL
)

// Config describes a lab.
type Config struct {
	// Flavor is the containerd to run: Flavor16 (default) or Flavor2.
	Flavor string
	// Prefix names everything the lab creates: network namespace
	// "patu-<prefix>", bridge "<prefix>br0", CNI network "patu-<prefix>",
	// directory BaseDir/<prefix>, cgroups under "/patu-rtlab-<prefix>". 1-6
	// lowercase letters or digits, starting with a letter; labs running at
	// the same time need different prefixes (and subnets).
	Prefix string
	// Subnet is the pods' IPv4 subnet, e.g. 10.202.1.0/24. The bridge
	// takes the first address and is the pods' gateway.
	Subnet netip.Prefix
	// Subnet6 is an optional IPv6 subnet. When set, every pod gets an
	// address from both (dual stack).
	Subnet6 netip.Prefix
	// Chain lists CNI plugins run after bridge, in order.
	Chain []Plugin
	// Tools is the directory with crictl (bin/), containerd 2.x (bin2/) and
	// the image cache. Default: $PATU_TOOLS, else DefaultTools.
	Tools string
	// ImageFiles are extra files for the workload image: path in the
	// image (e.g. "/bin/patu-testpeer") to host file. Mode bits are kept.
	ImageFiles map[string]string
	// Log receives progress and timings; nil discards them.
	Log *slog.Logger
}

// Plugin is a chained CNI plugin.
type Plugin struct {
	// Type is the plugin's type in the conflist, and its binary's name in
	// the lab's CNI bin directory.
	Type string
	// Binary is the plugin executable on the host.
	Binary string
	// Conf holds extra keys of the plugin's conflist entry. Capabilities
	// given here are kept; the pod-annotations capability is always added,
	// so the plugin receives the pod's annotations in runtimeConfig.
	Conf map[string]any
}

var (
	prefixRE     = regexp.MustCompile(`^[a-z][a-z0-9]{0,5}$`)
	pluginTypeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
)

func (c *Config) validate() error {
	if !prefixRE.MatchString(c.Prefix) {
		return fmt.Errorf("prefix %q: want 1-6 lowercase letters or digits, starting with a letter", c.Prefix)
	}
	switch c.Flavor {
	case "":
		c.Flavor = Flavor16
	case Flavor16, Flavor2:
	default:
		return fmt.Errorf("flavor %q: want %q or %q", c.Flavor, Flavor16, Flavor2)
	}
	if !validSubnet4(c.Subnet) {
		return fmt.Errorf("subnet %s: want an IPv4 prefix between /8 and /29", c.Subnet)
	}
	if c.Subnet6.IsValid() && !validSubnet6(c.Subnet6) {
		return fmt.Errorf("IPv6 subnet %s: want an IPv6 prefix between /48 and /120", c.Subnet6)
	}
	for _, p := range c.Chain {
		if !pluginTypeRE.MatchString(p.Type) {
			return fmt.Errorf("chained plugin type %q: want letters, digits, '_', '.' or '-'", p.Type)
		}
		// Replacing one of these in the farm would break the lab itself.
		if p.Type == "bridge" || p.Type == "host-local" || p.Type == "loopback" {
			return fmt.Errorf("chained plugin type %q: taken by the lab's own network", p.Type)
		}
		if !isExecutable(p.Binary) {
			return fmt.Errorf("chained plugin %s: %s is not an executable file", p.Type, p.Binary)
		}
	}
	for dst := range c.ImageFiles {
		if _, err := imagePath(dst); err != nil {
			return err
		}
	}
	if c.Tools == "" {
		c.Tools = os.Getenv("PATU_TOOLS")
	}
	if c.Tools == "" {
		c.Tools = DefaultTools
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Lab is a running containerd with CRI, started by Start. Its methods are
// safe for concurrent use.
type Lab struct {
	cfg    Config
	l      layout
	log    *slog.Logger
	bins   binaries
	nsPath string // set once the lab's netns exists (and is ours)
	// ownsDir is set once Start has created the lab directory. Only then
	// does a failed Start tear down: before, the directory and the netns
	// may belong to another lab with the same prefix.
	ownsDir bool

	mu      sync.Mutex
	d       *daemon // nil before the first start
	conn    *grpc.ClientConn
	rt      runtimeapi.RuntimeServiceClient
	images  runtimeapi.ImageServiceClient
	pods    map[string]*podRecord // by sandbox id
	logs    map[string]string     // container id -> log file
	seenIDs map[string]bool       // every sandbox and container id, for the libcni cache
	closed  bool
}

// binaries are the flavor's programs.
type binaries struct {
	containerd, ctr, runc, crictl string
	// path is containerd's PATH: it finds the shim there, and the 1.6 and
	// 2.x shims are not interchangeable.
	path string
}

// state is what Start records in lab.json for Close and Sweep.
type state struct {
	// RemoveIfEmpty are directories outside the lab directory that did
	// not exist when the lab started and that the runtime may create.
	RemoveIfEmpty []string `json:"removeIfEmpty"`
}

// Start sets up a lab and returns it ready for CRI calls: it builds the
// images (cached under Tools), creates the network namespace and the lab
// directory, writes the configurations, starts containerd in that
// namespace, waits until CRI reports the runtime and network ready, and
// imports the images. On error everything created is removed again.
func Start(ctx context.Context, cfg Config) (*Lab, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("rtlab: %w", err)
	}
	lab := &Lab{
		cfg: cfg, l: newLayout(cfg.Prefix), log: cfg.Log.With("lab", cfg.Prefix),
		pods: map[string]*podRecord{}, logs: map[string]string{}, seenIDs: map[string]bool{},
	}
	t0 := time.Now()
	if err := lab.start(ctx); err != nil {
		if lab.ownsDir {
			if cerr := lab.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("roll back: %w", cerr))
			}
		}
		return nil, fmt.Errorf("rtlab %s: %w", cfg.Prefix, err)
	}
	lab.log.Info("lab ready", "flavor", cfg.Flavor, "socket", lab.l.sock, "netns", lab.nsPath, "took", time.Since(t0).Round(time.Millisecond))
	return lab, nil
}

func (l *Lab) start(ctx context.Context) error {
	var err error
	if l.bins, err = findBinaries(l.cfg); err != nil {
		return err
	}
	t := time.Now()
	imgs, err := buildImages(ctx, l.cfg.Tools, l.cfg.ImageFiles)
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	l.log.Debug("images built", "pause", imgs.pause, "workload", imgs.workload, "took", time.Since(t).Round(time.Millisecond))

	if err := l.makeDir(); err != nil {
		return err
	}
	l.ownsDir = true
	st := state{RemoveIfEmpty: absentDirs()}
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(l.l.stateFile, data, 0o644); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := l.makeNetns(); err != nil {
		return err
	}
	if err := l.writeConfigs(); err != nil {
		return err
	}
	if err := l.startDaemon(ctx); err != nil {
		return err
	}
	t = time.Now()
	for _, img := range []string{imgs.pause, imgs.workload} {
		if err := l.importImage(ctx, img); err != nil {
			return err
		}
	}
	for _, ref := range []string{PauseImage, WorkloadImage} {
		if err := l.waitImage(ctx, ref); err != nil {
			return err
		}
	}
	l.log.Debug("images imported", "took", time.Since(t).Round(time.Millisecond))
	return nil
}

// makeDir creates the lab directory, failing when it exists.
func (l *Lab) makeDir() error {
	for range 3 {
		if err := os.MkdirAll(BaseDir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", BaseDir, err)
		}
		err := os.Mkdir(l.l.dir, 0o755)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, os.ErrExist):
			return fmt.Errorf("%s exists: a lab with prefix %q is running, or an earlier run crashed (rtlab.Sweep(%q) removes it)",
				l.l.dir, l.cfg.Prefix, l.cfg.Prefix)
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("create lab dir: %w", err)
		}
		// ENOENT: the last other lab removed BaseDir in between. Again.
	}
	return fmt.Errorf("create lab dir %s: %s keeps disappearing", l.l.dir, BaseDir)
}

// findBinaries locates the flavor's programs, failing with what to install.
func findBinaries(cfg Config) (binaries, error) {
	const sysPath = "/usr/bin:/usr/sbin:/bin:/sbin:/usr/local/sbin:/usr/local/bin"
	b := binaries{crictl: filepath.Join(cfg.Tools, "bin", "crictl")}
	var shim string
	switch cfg.Flavor {
	case Flavor2:
		bin2 := filepath.Join(cfg.Tools, "bin2")
		b.containerd, b.ctr, shim = filepath.Join(bin2, "containerd"), filepath.Join(bin2, "ctr"), filepath.Join(bin2, "containerd-shim-runc-v2")
		b.path = bin2 + ":" + sysPath
	default:
		// Debian's shim first: the 2.x shim fails under 1.6 with
		// "bootstrap parameters do not match".
		b.containerd, b.ctr, shim = "/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2"
		b.path = sysPath
	}
	for _, p := range []string{b.containerd, b.ctr, shim} {
		if !isExecutable(p) {
			return b, fmt.Errorf("containerd %s: %s not found: run hack/e2e-deps.sh (as root)", cfg.Flavor, p)
		}
	}
	b.runc = "/usr/sbin/runc"
	if !isExecutable(b.runc) {
		p, err := exec.LookPath("runc")
		if err != nil {
			return b, errors.New("runc not found: run hack/e2e-deps.sh (as root), or apt-get install runc")
		}
		b.runc = p
	}
	return b, nil
}

// absentDirs returns the directories outside the lab directory that the
// runtimes create on demand and that do not exist now: Close removes them
// again when they are empty. Deepest first.
func absentDirs() []string {
	cands := []string{"/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni"}
	if mnts, err := cgroupMounts(); err == nil {
		for _, m := range mnts {
			// Containers without a cgroup parent go to /k8s.io/<id>.
			cands = append(cands, filepath.Join(m, "k8s.io"))
		}
	}
	var absent []string
	for _, d := range cands {
		if _, err := os.Lstat(d); errors.Is(err, os.ErrNotExist) {
			absent = append(absent, d)
		}
	}
	return absent
}

// makeNetns creates the namespace containerd, the bridge and the host ends
// of the pods' veths live in.
func (l *Lab) makeNetns() error {
	p, err := netns.Create(l.l.netnsName)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("%w: a lab with prefix %q is running, or an earlier run crashed (rtlab.Sweep(%q) removes it)",
				err, l.cfg.Prefix, l.cfg.Prefix)
		}
		return err
	}
	l.nsPath = p
	return netns.Do(p, func() error {
		// DAD off for the bridge and host veths: a tentative gateway
		// address would make a dual-stack pod's first packets fail.
		for _, k := range []string{"ipv6/conf/all/accept_dad", "ipv6/conf/default/accept_dad"} {
			if err := os.WriteFile("/proc/sys/net/"+k, []byte("0"), 0); err != nil {
				return fmt.Errorf("sysctl %s in %s: %w", k, p, err)
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo in %s: %w", p, err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up in %s: %w", p, err)
		}
		return nil
	})
}

func (l *Lab) writeConfigs() error {
	for _, d := range []string{l.l.root, l.l.stateDir, l.l.runcRoot, l.l.shimDir, l.l.podsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := writeCNI(l.l, l.cfg); err != nil {
		return fmt.Errorf("CNI config: %w", err)
	}
	data, err := containerdConfig(l.l, l.cfg.Flavor, l.bins.runc)
	if err != nil {
		return err
	}
	if err := os.WriteFile(l.l.config, data, 0o644); err != nil {
		return fmt.Errorf("write containerd config: %w", err)
	}
	if err := os.WriteFile(l.l.crictlYAML, crictlConfig(l.l), 0o644); err != nil {
		return fmt.Errorf("write crictl config: %w", err)
	}
	return nil
}

// daemon is one run of containerd.
type daemon struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // exit status, valid after done
}

func (d *daemon) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// startDaemon starts containerd in the lab's namespace and waits until CRI
// is ready. l.mu must not be held.
func (l *Lab) startDaemon(ctx context.Context) error {
	t := time.Now()
	logf, err := os.OpenFile(l.l.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open containerd log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(l.bins.containerd, "--config", l.l.config)
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "PATH=") }),
		"PATH="+l.bins.path)
	// Files, not buffers: os/exec then starts no copying goroutines, and
	// the log survives us.
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C meant for the caller (the demo) must
	// not stop containerd before Close has removed the pods.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Forked on a thread inside the namespace, so containerd starts there,
	// as with nsenter --net. Not `ip netns exec`: it remounts /sys, which
	// hides the cgroup mounts from containerd and runc.
	if err := netns.Do(l.nsPath, cmd.Start); err != nil {
		return fmt.Errorf("start %s: %w", l.bins.containerd, err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	l.mu.Lock()
	l.d = d
	l.mu.Unlock()
	if err := l.waitReady(ctx, d); err != nil {
		return err
	}
	l.log.Debug("containerd ready", "pid", cmd.Process.Pid, "took", time.Since(t).Round(time.Millisecond))
	return nil
}

// waitReady waits until containerd accepts connections on its socket and
// CRI reports both RuntimeReady and NetworkReady, then installs the
// clients.
func (l *Lab) waitReady(ctx context.Context, d *daemon) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	fail := func(what string) error {
		return fmt.Errorf("containerd %s: %s; log %s:\n%s", l.cfg.Flavor, what, l.l.logFile, l.logTail())
	}
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	wait := func() error {
		select {
		case <-d.done:
			return fail(fmt.Sprintf("exited during start-up (%v)", d.err))
		case <-ctx.Done():
			return nil
		case <-poll.C:
			return nil
		}
	}
	// The socket first: a gRPC client dialled before it exists would sit
	// in connection backoff.
	for {
		c, err := net.Dial("unix", l.l.sock)
		if err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			return fail(fmt.Sprintf("socket %s not up after %s: %v", l.l.sock, readyTimeout, err))
		}
		if err := wait(); err != nil {
			return err
		}
	}
	conn, err := grpc.NewClient("unix://"+l.l.sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		// Reconnect quickly: the lab restarts containerd on purpose.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}))
	if err != nil {
		return fmt.Errorf("CRI client: %w", err)
	}
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	var last string
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := rt.Status(cctx, &runtimeapi.StatusRequest{})
		ccancel()
		if err == nil {
			last = notReady(st.GetStatus())
			if last == "" {
				break
			}
		} else {
			last = err.Error()
		}
		if ctx.Err() != nil {
			conn.Close()
			return fail("CRI not ready after " + readyTimeout.String() + ": " + last)
		}
		if err := wait(); err != nil {
			conn.Close()
			return err
		}
	}
	l.mu.Lock()
	old := l.conn
	l.conn, l.rt, l.images = conn, rt, runtimeapi.NewImageServiceClient(conn)
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// notReady returns why a CRI status is not ready, or "" when it is.
func notReady(st *runtimeapi.RuntimeStatus) string {
	var why []string
	for _, want := range []string{runtimeapi.RuntimeReady, runtimeapi.NetworkReady} {
		ok := false
		for _, c := range st.GetConditions() {
			if c.GetType() == want {
				ok = c.GetStatus()
				if !ok {
					why = append(why, fmt.Sprintf("%s=false (%s: %s)", want, c.GetReason(), c.GetMessage()))
				}
			}
		}
		if !ok && !slices.ContainsFunc(st.GetConditions(), func(c *runtimeapi.RuntimeCondition) bool { return c.GetType() == want }) {
			why = append(why, want+" missing")
		}
	}
	return strings.Join(why, ", ")
}

// logHint returns the last lines of containerd's log to append to an
// error of a CRI call: the runtime's reason (a runc or CNI failure) is
// often only there.
func (l *Lab) logHint() string {
	return fmt.Sprintf("\ncontainerd log %s, last lines:\n%s", l.l.logFile, fileTail(l.l.logFile, 10))
}

// logTail returns the last lines of containerd's log, for error messages.
func (l *Lab) logTail() string { return fileTail(l.l.logFile, 20) }

func fileTail(p string, lines int) string {
	f, err := os.Open(p)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	const max = 8 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// importImage imports an OCI tarball with the flavor's ctr into the k8s.io
// namespace, where CRI looks for images.
func (l *Lab) importImage(ctx context.Context, tarball string) error {
	cmd := exec.CommandContext(ctx, l.bins.ctr, "-a", l.l.sock, "-n", "k8s.io", "images", "import", tarball)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("import %s: %w: %s", tarball, err, bytes.TrimSpace(out))
	}
	return nil
}

// waitImage waits until CRI lists the image ref.
func (l *Lab) waitImage(ctx context.Context, ref string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, images := l.clients()
	for {
		st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err == nil && st.GetImage() != nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("image %s imported but not visible to CRI: %v", ref, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// clients returns the current CRI clients; Restart replaces them.
func (l *Lab) clients() (runtimeapi.RuntimeServiceClient, runtimeapi.ImageServiceClient) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rt, l.images
}

// Socket returns the path of containerd's gRPC socket, which serves CRI
// and the containerd API (ctr -a SOCKET).
func (l *Lab) Socket() string { return l.l.sock }

// Netns returns the path of the network namespace containerd, the bridge
// and the host ends of the pods' veths live in.
func (l *Lab) Netns() string { return l.nsPath }

// Bridge returns the name of the pods' bridge in Netns.
func (l *Lab) Bridge() string { return l.l.bridge }

// Dir returns the lab directory (configuration, state, logs).
func (l *Lab) Dir() string { return l.l.dir }

// Flavor returns the containerd flavor the lab runs.
func (l *Lab) Flavor() string { return l.cfg.Flavor }

// PodCgroupParent returns the linux.cgroup_parent for a pod with the given
// uid: a per-pod directory under the lab's cgroup tree, which Close and
// Sweep remove. RunPod uses it with PodSpec.PodCgroup; callers starting
// pods another way (crictl runp) should use it too.
func (l *Lab) PodCgroupParent(uid string) string { return l.l.cgroupRoot + "/pod" + uid }

// CrictlConfig returns the path of a crictl.yaml for the lab. crictl exec
// and attach work only inside Netns (see Crictl).
func (l *Lab) CrictlConfig() string { return l.l.crictlYAML }

// Crictl runs crictl with the lab's configuration inside Netns, where the
// CRI stream server for exec and attach listens, and returns its standard
// output.
func (l *Lab) Crictl(ctx context.Context, args ...string) ([]byte, error) {
	if !isExecutable(l.bins.crictl) {
		return nil, fmt.Errorf("crictl: %s not found: run hack/e2e-deps.sh (as root)", l.bins.crictl)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, l.bins.crictl, append([]string{"--config", l.l.crictlYAML}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := netns.Do(l.nsPath, cmd.Start); err != nil {
		return nil, fmt.Errorf("crictl %s: %w", strings.Join(args, " "), err)
	}
	if err := cmd.Wait(); err != nil {
		return stdout.Bytes(), fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// Restart stops containerd with SIGTERM (SIGKILL after 15 s) and starts it
// again with the same configuration, waiting until CRI is ready. Pods keep
// running meanwhile: their shims outlive the daemon. After Kill it just
// starts containerd again.
func (l *Lab) Restart(ctx context.Context) error {
	if err := l.stopDaemon(ctx, unix.SIGTERM); err != nil {
		return fmt.Errorf("rtlab %s: restart: %w", l.cfg.Prefix, err)
	}
	if err := l.startDaemon(ctx); err != nil {
		return fmt.Errorf("rtlab %s: restart: %w", l.cfg.Prefix, err)
	}
	return nil
}

// Kill kills containerd with SIGKILL, leaving shims and pods running, as a
// crashed daemon would.
func (l *Lab) Kill(ctx context.Context) error {
	if err := l.stopDaemon(ctx, unix.SIGKILL); err != nil {
		return fmt.Errorf("rtlab %s: kill: %w", l.cfg.Prefix, err)
	}
	return nil
}

// stopDaemon signals containerd and waits until it is gone, escalating to
// SIGKILL after stopTimeout. A daemon already gone is not an error.
func (l *Lab) stopDaemon(ctx context.Context, sig unix.Signal) error {
	l.mu.Lock()
	d := l.d
	l.mu.Unlock()
	if d == nil || !d.running() {
		return nil
	}
	if err := d.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal containerd: %w", err)
	}
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for containerd to exit: %w", ctx.Err())
	case <-time.After(stopTimeout):
	}
	l.log.Warn("containerd ignored the signal, killing it", "signal", sig, "after", stopTimeout)
	if err := d.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill containerd: %w", err)
	}
	<-d.done
	return nil
}
