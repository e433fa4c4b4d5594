package k8slab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/netns"
)

// BaseDir holds one directory per node. Not under /run: the node mounts its
// own /run, and its components must still reach their configuration here.
const BaseDir = "/var/tmp/pk8s"

// Proxy modes of kube-proxy.
const (
	ProxyIPTables = "iptables"
	ProxyNFTables = "nftables"
)

// sysctls kubelet sets to its liking at start (setupKernelTunables). The
// node gets private copies: bind mounts of files in its directory.
var sysctls = map[string]string{
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
}

// Config describes a node.
type Config struct {
	// Name names everything the node creates: netns "pk8s-<name>", cgroup
	// "/pk8s-<name>", directory BaseDir/<name>, Kubernetes node
	// "pk8s-<name>". 1-6 lowercase letters or digits.
	Name string
	// ProxyMode is kube-proxy's mode: ProxyIPTables (default) or
	// ProxyNFTables.
	ProxyMode string
	// Tools is the tool cache (k8s/bin, bin2, images): default
	// $PATU_TOOLS, else /var/cache/patu-e2e.
	Tools string
	// ImageFiles are extra files of the workload image
	// (rtlab.WorkloadImage), as with rtlab.Config.ImageFiles.
	ImageFiles map[string]string
	// Images are further OCI tarballs imported with ctr before kubelet
	// starts (the Patu image).
	Images []string
	// Log receives progress; nil discards it.
	Log *slog.Logger
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,5}$`)

// Node is a running single-node cluster.
type Node struct {
	cfg    Config
	dir    string
	nsPath string
	mntNS  string
	// daemonCgroups are /pk8s-<name>/daemons in every hierarchy.
	daemonCgroups []string
	bins          map[string]string
	admin         string // admin kubeconfig (host path, also valid inside)
	log           *slog.Logger
	hostname      string

	mu    sync.Mutex
	procs map[string]*proc
}

type proc struct {
	name string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// Start builds the images, sweeps what an earlier node of the same name
// left, and starts the node; it returns once the node is Ready and the
// default service account exists. On error everything is removed again.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if !nameRE.MatchString(cfg.Name) {
		return nil, fmt.Errorf("k8slab: name %q: want 1-6 lowercase letters or digits, starting with a letter", cfg.Name)
	}
	switch cfg.ProxyMode {
	case "":
		cfg.ProxyMode = ProxyIPTables
	case ProxyIPTables, ProxyNFTables:
	default:
		return nil, fmt.Errorf("k8slab: proxy mode %q: want iptables or nftables", cfg.ProxyMode)
	}
	if cfg.Tools == "" {
		cfg.Tools = os.Getenv("PATU_TOOLS")
	}
	if cfg.Tools == "" {
		cfg.Tools = rtlab.DefaultTools
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	n := &Node{
		cfg: cfg, dir: filepath.Join(BaseDir, cfg.Name), log: cfg.Log.With("node", cfg.Name),
		hostname: "pk8s-" + cfg.Name,
		procs:    map[string]*proc{},
	}
	n.mntNS = filepath.Join(n.dir, "ns", "mnt")
	t0 := time.Now()
	if err := Sweep(cfg.Name); err != nil {
		return nil, fmt.Errorf("k8slab %s: sweep: %w", cfg.Name, err)
	}
	if err := n.start(ctx); err != nil {
		if cerr := n.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", cerr))
		}
		return nil, fmt.Errorf("k8slab %s: %w", cfg.Name, err)
	}
	n.log.Info("node ready", "proxy", cfg.ProxyMode, "took", time.Since(t0).Round(time.Millisecond))
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	if err := n.findBinaries(); err != nil {
		return err
	}
	imgs, err := rtlab.BuildImages(ctx, n.cfg.Tools, n.cfg.ImageFiles)
	if err != nil {
		return err
	}
	for _, d := range []string{"ns", "conf", "log", "sysctl", "kine", "root/run/netns", "root/var/log",
		"root" + CNIConfDir, "root" + CNIBinDir, "root" + filepath.Dir(containerdConf), "root" + kubeletRoot} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return fmt.Errorf("create node dir: %w", err)
		}
	}
	if err := n.makeCgroups(); err != nil {
		return err
	}
	if err := n.makeNetns(); err != nil {
		return err
	}
	if err := n.makeMountNS(ctx); err != nil {
		return err
	}
	if err := n.writeFiles(); err != nil {
		return err
	}
	if err := n.startControlPlane(ctx); err != nil {
		return err
	}
	if err := n.StartContainerd(ctx); err != nil {
		return err
	}
	for _, img := range append([]string{imgs.Pause, imgs.Workload}, n.cfg.Images...) {
		if err := n.ImportImage(ctx, img); err != nil {
			return err
		}
	}
	if err := n.StartKubelet(ctx); err != nil {
		return err
	}
	if err := n.startProc("kube-proxy", n.bins["kube-proxy"], "--config", filepath.Join(n.dir, "conf", "kube-proxy.yaml"), "--v=1"); err != nil {
		return err
	}
	return n.waitReady(ctx)
}

func (n *Node) findBinaries() error {
	n.bins = map[string]string{}
	k8s := filepath.Join(n.cfg.Tools, "k8s", "bin")
	for _, b := range []string{"kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		n.bins[b] = filepath.Join(k8s, b)
	}
	bin2 := filepath.Join(n.cfg.Tools, "bin2")
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		n.bins[b] = filepath.Join(bin2, b)
	}
	for b, p := range n.bins {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s not found at %s: run hack/k8s-deps.sh and hack/e2e-deps.sh (make test-deps)", b, p)
		}
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return errors.New("runc not found: run hack/e2e-deps.sh (as root), or apt-get install runc")
	}
	n.bins["runc"] = runc
	return nil
}

// makeNetns creates the node's network: an uplink with the node
// address and a default route through it, and bridge netfilter on, as
// kube-proxy requires for pods on one bridge.
func (n *Node) makeNetns() error {
	p, err := netns.Create(n.hostname)
	if err != nil {
		return err
	}
	n.nsPath = p
	if _, err := os.Stat("/proc/sys/net/bridge"); err != nil {
		if out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput(); err != nil {
			return fmt.Errorf("modprobe br_netfilter: %v: %s", err, bytes.TrimSpace(out))
		}
	}
	return netns.Do(p, func() error {
		for k, v := range map[string]string{
			"net/ipv4/ip_forward":                 "1",
			"net/bridge/bridge-nf-call-iptables":  "1",
			"net/bridge/bridge-nf-call-ip6tables": "1",
		} {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return fmt.Errorf("sysctl %s in %s: %w", k, p, err)
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		// A veth pair whose far end stays in the node: the uplink of a
		// node without a network (no dummy module on every kernel).
		up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "node0"}, PeerName: "node0peer"}
		if err := netlink.LinkAdd(up); err != nil {
			return fmt.Errorf("add node0: %w", err)
		}
		if peer, err := netlink.LinkByName("node0peer"); err != nil {
			return err
		} else if err := netlink.LinkSetUp(peer); err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(NodeIP + "/24")
		if err := netlink.AddrAdd(up, addr); err != nil {
			return fmt.Errorf("address node0: %w", err)
		}
		if err := netlink.LinkSetUp(up); err != nil {
			return err
		}
		_, def, _ := net.ParseCIDR("0.0.0.0/0")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Dst: def, Gw: net.ParseIP("10.44.0.254")})
	})
}

// makeMountNS creates the node's persistent mount namespace and mounts
// its private /run, /var/lib, /var/log, bpffs and sysctl files.
func (n *Node) makeMountNS(ctx context.Context) error {
	nsDir := filepath.Dir(n.mntNS)
	// A namespace file can only be bind-mounted on a private mount.
	if err := syscall.Mount(nsDir, nsDir, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", nsDir, err)
	}
	if err := syscall.Mount("", nsDir, "", syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", nsDir, err)
	}
	if err := os.WriteFile(n.mntNS, nil, 0o644); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "unshare", "--mount="+n.mntNS, "--propagation", "private", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("unshare mount namespace: %v: %s", err, bytes.TrimSpace(out))
	}
	var sh strings.Builder
	sh.WriteString("set -e\n")
	// The host's mounts below the directories the node replaces go first:
	// shadowed, they would still confuse mountinfo readers (containerd's
	// "not a shared or slave mount" for /run/netns), and the host's netns
	// files would keep other namespaces alive as long as the node.
	// A pass may find a mount already gone (a lazy unmount of its parent,
	// or the host's copy removed meanwhile): again until none is left.
	sh.WriteString(`under() { awk '{print $5}' /proc/self/mountinfo | grep -E '^/(run|var/lib|var/log)(/|$)' | sort -ru; }
for pass in 1 2 3 4 5; do
	[ -z "$(under)" ] && break
	under | while read -r m; do umount -l "$m" 2>/dev/null || true; done
done
[ -z "$(under)" ] || { echo "host mounts left under /run, /var/lib, /var/log:"; under; exit 1; }
`)
	for _, d := range []string{"/run", "/var/lib", "/var/log"} {
		fmt.Fprintf(&sh, "mount --bind %s %s\n", shq(filepath.Join(n.dir, "root", d)), d)
	}
	// Shared, as on a systemd host: a DaemonSet's HostToContainer mount of
	// /run/netns then sees the pods' namespaces created after it started.
	sh.WriteString("mount --make-rshared /run\nmount --make-rshared /var/lib\n")
	sh.WriteString("mount -t bpf bpf /sys/fs/bpf\n")
	for k, v := range sysctls {
		f := filepath.Join(n.dir, "sysctl", strings.ReplaceAll(k, "/", "."))
		// The node starts with the host's values; kubelet then writes its own.
		cur, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			cur = []byte(v + "\n")
		}
		if err := os.WriteFile(f, cur, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&sh, "mount --bind %s /proc/sys/%s\n", shq(f), k)
	}
	cmd := exec.CommandContext(ctx, "nsenter", "--mount="+n.mntNS, "--", "sh", "-c", sh.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("node mounts: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// HostPath returns where the host sees path p of the node.
func (n *Node) HostPath(p string) string {
	for _, d := range []string{"/run", "/var/lib", "/var/log"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return filepath.Join(n.dir, "root", p)
		}
	}
	return p
}

func (n *Node) writeFiles() error {
	conf := filepath.Join(n.dir, "conf")
	p, err := newPKI(conf)
	if err != nil {
		return err
	}
	if err := p.serviceAccountKey(); err != nil {
		return err
	}
	ips := []net.IP{net.ParseIP(NodeIP), net.ParseIP("127.0.0.1"), net.ParseIP("10.43.0.1")}
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if err := p.issue("apiserver", "kube-apiserver", nil, ips, dns); err != nil {
		return err
	}
	// One identity for the control plane, kube-proxy and kubectl; kubelet
	// its own, as the Node authorizer wants.
	if err := p.issue("admin", "patu-k8slab-admin", []string{"system:masters"}, nil, nil); err != nil {
		return err
	}
	if err := p.issue("kubelet", "system:node:"+n.hostname, []string{"system:nodes"}, nil, nil); err != nil {
		return err
	}
	server := "https://127.0.0.1:6443"
	if n.admin, err = p.kubeconfig("admin", server); err != nil {
		return err
	}
	if _, err := p.kubeconfig("kubelet", server); err != nil {
		return err
	}
	files := map[string]string{
		filepath.Join(conf, "kubelet.yaml"):                   kubeletConfig("/pk8s-"+n.cfg.Name, p.path("ca.crt")),
		filepath.Join(conf, "kube-proxy.yaml"):                kubeProxyConfig(n.cfg.ProxyMode, n.admin, n.hostname),
		n.HostPath(containerdConf):                            containerdConfig(n.bins["runc"], rtlab.PauseImage),
		n.HostPath(filepath.Join(CNIConfDir, BridgeConflist)): bridgeConflist(),
	}
	for f, data := range files {
		if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
			return err
		}
	}
	// K3s ships the reference plugins in its data dir; the node gets
	// Debian's.
	for _, pl := range []string{"bridge", "host-local", "portmap", "loopback"} {
		data, err := os.ReadFile(filepath.Join("/usr/lib/cni", pl))
		if err != nil {
			return fmt.Errorf("CNI plugin %s (apt-get install containernetworking-plugins): %w", pl, err)
		}
		if err := os.WriteFile(filepath.Join(n.HostPath(CNIBinDir), pl), data, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) startControlPlane(ctx context.Context) error {
	conf := filepath.Join(n.dir, "conf")
	c := func(f string) string { return filepath.Join(conf, f) }
	if err := n.startProc("kine", n.bins["kine"], "--listen-address", "127.0.0.1:2379",
		"--endpoint", "sqlite://"+filepath.Join(n.dir, "kine", "state.db")+"?_journal=WAL&cache=shared&_busy_timeout=30000"); err != nil {
		return err
	}
	if err := n.startProc("kube-apiserver", n.bins["kube-apiserver"],
		"--etcd-servers", "http://127.0.0.1:2379",
		"--advertise-address", NodeIP, "--bind-address", "0.0.0.0", "--secure-port", "6443",
		"--service-cluster-ip-range", ServiceCIDR,
		"--client-ca-file", c("ca.crt"), "--tls-cert-file", c("apiserver.crt"), "--tls-private-key-file", c("apiserver.key"),
		"--kubelet-client-certificate", c("admin.crt"), "--kubelet-client-key", c("admin.key"),
		"--service-account-key-file", c("sa.pub"), "--service-account-signing-key-file", c("sa.key"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--authorization-mode", "Node,RBAC", "--allow-privileged=true",
		// No DNS for the node name.
		"--kubelet-preferred-address-types", "InternalIP",
		"--enable-priority-and-fairness=false", "--profiling=false", "--v=1"); err != nil {
		return err
	}
	if err := n.waitAPI(ctx); err != nil {
		return err
	}
	if err := n.startProc("kube-controller-manager", n.bins["kube-controller-manager"],
		"--kubeconfig", n.admin, "--authentication-kubeconfig", n.admin, "--authorization-kubeconfig", n.admin,
		"--bind-address", "127.0.0.1", "--leader-elect=false",
		"--allocate-node-cidrs=true", "--cluster-cidr", ClusterCIDR, "--node-cidr-mask-size", "24",
		"--service-cluster-ip-range", ServiceCIDR, "--root-ca-file", c("ca.crt"),
		"--service-account-private-key-file", c("sa.key"), "--use-service-account-credentials=false",
		"--profiling=false", "--v=1"); err != nil {
		return err
	}
	return n.startProc("kube-scheduler", n.bins["kube-scheduler"],
		"--kubeconfig", n.admin, "--authentication-kubeconfig", n.admin, "--authorization-kubeconfig", n.admin,
		"--bind-address", "127.0.0.1", "--leader-elect=false", "--profiling=false", "--v=1")
}

// StartContainerd starts containerd and waits for its socket.
func (n *Node) StartContainerd(ctx context.Context) error {
	if err := n.startProc("containerd", n.bins["containerd"], "--config", containerdConf); err != nil {
		return err
	}
	return n.waitFor(ctx, "containerd socket", 30*time.Second, func() error {
		c, err := net.Dial("unix", n.HostPath(ContainerdSock))
		if err == nil {
			c.Close()
		}
		return err
	})
}

// StartKubelet starts kubelet.
func (n *Node) StartKubelet(ctx context.Context) error {
	conf := filepath.Join(n.dir, "conf")
	return n.startProc("kubelet", n.bins["kubelet"], "--config", filepath.Join(conf, "kubelet.yaml"),
		"--kubeconfig", filepath.Join(conf, "kubelet.kubeconfig"), "--hostname-override", n.hostname,
		"--node-ip", NodeIP, "--v=1")
}

// Stop stops one component (SIGTERM, SIGKILL after 15 s), e.g. to restart
// it with StartKubelet or StartContainerd.
func (n *Node) Stop(name string) error {
	n.mu.Lock()
	p := n.procs[name]
	delete(n.procs, name)
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

// startProc starts a component inside the node's namespaces and cgroup.
func (n *Node) startProc(name, bin string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(n.dir, "log", name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	// Joins the node's cgroups before it execs the component, so all it
	// forks (containerd's shims with it) is there too and Close kills it.
	join := `for c in $PK8S_CGROUPS; do echo $$ >"$c/cgroup.procs"; done; exec "$@"`
	cmd := exec.Command("sh", append([]string{"-ec", join, "sh", "nsenter", "--mount=" + n.mntNS, "--net=" + n.nsPath, "--", bin}, args...)...)
	cmd.Env = append(n.env(), "PK8S_CGROUPS="+strings.Join(n.daemonCgroups, " "))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = filepath.Join(n.dir, "kine")
	// Its own process group keeps a Ctrl-C of the caller away from it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, args: args, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	n.mu.Lock()
	n.procs[name] = p
	n.mu.Unlock()
	n.log.Debug("started", "component", name, "pid", cmd.Process.Pid)
	return nil
}

func (n *Node) env() []string {
	return []string{
		"PATH=" + filepath.Join(n.cfg.Tools, "bin2") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "KUBECONFIG=" + n.admin,
	}
}

// waitFor polls fn until it returns nil, a component died, or timeout.
func (n *Node) waitFor(ctx context.Context, what string, timeout time.Duration, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = fn(); last == nil {
			return nil
		}
		if dead := n.deadProc(); dead != "" {
			return fmt.Errorf("%s: %s exited; log %s:\n%s", what, dead, n.LogPath(dead), tail(n.LogPath(dead), 15))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s after %s: %w", what, timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) deadProc() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, p := range n.procs {
		select {
		case <-p.done:
			return name
		default:
		}
	}
	return ""
}

// LogPath returns the log file of a component.
func (n *Node) LogPath(name string) string { return filepath.Join(n.dir, "log", name+".log") }

func tail(p string, lines int) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

func (n *Node) waitAPI(ctx context.Context) error {
	return n.waitFor(ctx, "kube-apiserver ready", 90*time.Second, func() error {
		out, err := n.Kubectl(ctx, "get", "--raw", "/readyz")
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(out)) != "ok" {
			return fmt.Errorf("readyz: %s", out)
		}
		return nil
	})
}

func (n *Node) waitReady(ctx context.Context) error {
	if err := n.waitFor(ctx, "node Ready", 120*time.Second, func() error {
		out, err := n.Kubectl(ctx, "get", "node", n.hostname, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.podCIDR}`)
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(string(out)); s != "True "+PodCIDR {
			return fmt.Errorf("node: %q", s)
		}
		return nil
	}); err != nil {
		return err
	}
	return n.waitFor(ctx, "default service account", 60*time.Second, func() error {
		_, err := n.Kubectl(ctx, "get", "serviceaccount", "default")
		return err
	})
}

// Kubectl runs kubectl as the cluster admin and returns its standard
// output.
func (n *Node) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return n.KubectlIn(ctx, nil, args...)
}

// KubectlIn is Kubectl with standard input (kubectl apply -f -).
func (n *Node) KubectlIn(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	return n.Exec(ctx, stdin, append([]string{n.bins["kubectl"], "--kubeconfig", n.admin}, args...)...)
}

// Exec runs a command inside the node's mount and network namespaces and
// returns its standard output.
func (n *Node) Exec(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--mount=" + n.mntNS, "--net=" + n.nsPath, "--"}, argv...)...)
	cmd.Env = n.env()
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// ImportImage imports an OCI tarball into containerd's k8s.io namespace.
func (n *Node) ImportImage(ctx context.Context, tarball string) error {
	_, err := n.Exec(ctx, nil, n.bins["ctr"], "-a", ContainerdSock, "-n", "k8s.io", "images", "import", tarball)
	return err
}

// Netns returns the node's network namespace.
func (n *Node) Netns() string { return n.nsPath }

// MountNS returns the node's mount namespace file (nsenter --mount=).
func (n *Node) MountNS() string { return n.mntNS }

// Hostname returns the node's name in the cluster.
func (n *Node) Hostname() string { return n.hostname }

// Dir returns the node directory.
func (n *Node) Dir() string { return n.dir }

// CgroupRoot returns kubelet's cgroupRoot, the node's cgroup in every
// hierarchy.
func (n *Node) CgroupRoot() string { return "/pk8s-" + n.cfg.Name }

// Pid returns the pid of a running component, 0 when it does not run.
func (n *Node) Pid(name string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.procs[name]; p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// Close stops the node and removes everything it created.
func (n *Node) Close() error {
	n.mu.Lock()
	procs := n.procs
	n.procs = map[string]*proc{}
	n.mu.Unlock()
	// kubelet first, and gracefully: its pods then go through CNI DEL
	// (and Patu's preStop, if installed) only when the caller deleted
	// them; whatever still runs is killed with the cgroup below.
	for _, name := range []string{"kubelet", "kube-proxy"} {
		if p := procs[name]; p != nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
			}
		}
	}
	err := Sweep(n.cfg.Name)
	for _, p := range procs {
		<-p.done
	}
	return err
}

// Sweep removes a node by name, running or left by a crashed process:
// kills its cgroup tree, unmounts its mount namespace, deletes its network
// namespace, cgroups and directory. Nothing there is not an error.
func Sweep(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("k8slab: name %q invalid", name)
	}
	dir := filepath.Join(BaseDir, name)
	var errs []error
	if err := killCgroups(name); err != nil {
		errs = append(errs, err)
	}
	nsDir := filepath.Join(dir, "ns")
	for _, m := range []string{filepath.Join(nsDir, "mnt"), nsDir} {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if err := netns.Delete("pk8s-" + name); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := removeCgroups(name); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	if ents, err := os.ReadDir(BaseDir); err == nil && len(ents) == 0 {
		os.Remove(BaseDir)
	}
	return errors.Join(errs...)
}

// PodPid returns the pid of a process of a running pod's sandbox, by its
// Kubernetes namespace and name, for entering its network namespace.
func (n *Node) PodPid(ctx context.Context, namespace, name string) (int, error) {
	out, err := n.Kubectl(ctx, "get", "pod", "-n", namespace, name, "-o", "jsonpath={.metadata.uid}")
	if err != nil {
		return 0, err
	}
	uid := strings.ReplaceAll(strings.TrimSpace(string(out)), "-", "_")
	// kubelet's cgroupfs layout: <root>/kubepods[/<qos>]/pod<uid>/<container>.
	var pid int
	mnts, err := cgroupMounts()
	if err != nil {
		return 0, err
	}
	filepath.WalkDir(filepath.Join(mnts[0], n.CgroupRoot(), "kubepods"), func(p string, d os.DirEntry, err error) error {
		if err != nil || pid != 0 || !d.IsDir() || !strings.Contains(p, "pod"+strings.ReplaceAll(uid, "_", "-")) {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid, _ = strconv.Atoi(f[0])
		}
		return nil
	})
	if pid == 0 {
		return 0, fmt.Errorf("pod %s/%s: no process found under %s", namespace, name, n.CgroupRoot())
	}
	return pid, nil
}
