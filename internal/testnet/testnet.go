package testnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/netns"
)

// Config describes a topology.
type Config struct {
	// Prefix names everything the topology creates: namespaces
	// Prefix+"-node" and Prefix+"-p0"..., bridge Prefix+"-br", host-side
	// veths Prefix+"v0"..., cgroups Prefix+"-host" and Prefix+"-p0"...
	// At most 6 letters or digits; instances running at the same time need
	// different prefixes.
	Prefix string
	// Subnet4 is the pods' IPv4 subnet: the bridge gets the first address
	// (.1), pods the next ones (.2, .3, ...).
	Subnet4 netip.Prefix
	// Subnet6 is the pods' IPv6 subnet, numbered the same way (::1 for the
	// bridge, ::2 ... for pods).
	Subnet6 netip.Prefix
	// Pods is the number of pods.
	Pods int
	// CgroupParent is the cgroup v2 directory the pods' and the host's
	// cgroups are created in. Default: <cgroup2 mount>/patu-test-<Prefix>,
	// which Close removes as well.
	CgroupParent string
	// Uplink adds an "external" client: namespace Prefix+"-ext", linked to
	// the node by a veth pair (Prefix+"up" in the node, eth0 in the
	// client) numbered from Uplink4 and Uplink6 (node .1 / ::1, client .2
	// / ::2). See uplink.go.
	Uplink           bool
	Uplink4, Uplink6 netip.Prefix
}

// Net is a topology built by New.
type Net struct {
	// Node is the node network namespace. Its address is the bridge's,
	// and processes it starts run in the "host" cgroup: they act as host
	// processes for the pods.
	Node *Pod
	// Bridge is the name of the bridge in the node namespace.
	Bridge string
	// Pods are the pods, in order.
	Pods []*Pod
	// Ext is the external client when Config.Uplink is set: its HostVeth
	// is the node end of the uplink, its IPv4 and IPv6 are ExtIP4/6.
	Ext *Pod
	// Uplink is the node end of the uplink veth, in the node namespace.
	Uplink string
	// NodeUplinkIP4/6 are the node's addresses on the uplink, ExtIP4/6
	// the client's.
	NodeUplinkIP4, NodeUplinkIP6 netip.Addr
	ExtIP4, ExtIP6               netip.Addr

	cfg           Config
	cgroupParent  string
	createdParent bool
	// node is a netlink handle bound to the node namespace.
	node   *netlink.Handle
	netns  []string   // names of the namespaces created, node first
	cgdirs []string   // cgroup directories created, parent excluded
	files  []*os.File // open cgroup directories, closed by Close
	closed bool
}

// Pod is a network namespace with its own cgroup: one of Net.Pods, or
// Net.Node.
type Pod struct {
	// Name is the name of the network namespace (Prefix+"-p0", Prefix+"-node").
	Name string
	// NetnsPath is the namespace file, /run/netns/Name.
	NetnsPath string
	// IPv4 and IPv6 are the pod's addresses (the bridge's for Node).
	IPv4, IPv6 netip.Addr
	// HostVeth and HostIfindex name the host-side veth in the node
	// namespace; empty for Node.
	HostVeth    string
	HostIfindex int
	// PodVeth is the pod's interface inside its namespace, eth0 (the bridge
	// for Node).
	PodVeth string
	// PodMAC is the MAC of PodVeth, HostMAC the MAC of HostVeth (the
	// bridge's for Node, as the pods' gateway, nil for Node's HostMAC).
	PodMAC, HostMAC net.HardwareAddr
	// CgroupDir is the pod's own cgroup v2 directory.
	CgroupDir string

	net *Net
	// cgroupFD stays open for the pod's lifetime: every Command passes it
	// to clone3, and an fd closed before Start would be worse than useless.
	cgroupFD *os.File
}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,5}$`)

// usableTimeout bounds the wait for links and addresses to come up.
const usableTimeout = 10 * time.Second

// New builds the topology described by cfg. On error, whatever it had
// created is removed again.
func New(cfg Config) (*Net, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	n := &Net{cfg: cfg, Bridge: cfg.Prefix + "-br"}
	if err := n.build(); err != nil {
		if cerr := n.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", cerr))
		}
		return nil, fmt.Errorf("testnet %s: %w", cfg.Prefix, err)
	}
	return n, nil
}

func validate(cfg Config) error {
	if !prefixRE.MatchString(cfg.Prefix) {
		return fmt.Errorf("testnet: prefix %q: want 1-6 lowercase letters or digits, starting with a letter", cfg.Prefix)
	}
	if cfg.Pods < 0 || cfg.Pods > 250 {
		return fmt.Errorf("testnet %s: %d pods: want 0-250", cfg.Prefix, cfg.Pods)
	}
	// The network address, the bridge, the pods and (IPv4) broadcast.
	if !cfg.Subnet4.IsValid() || !cfg.Subnet4.Addr().Is4() || hostBits(cfg.Subnet4) < 2 || 1<<hostBits(cfg.Subnet4) < cfg.Pods+3 {
		return fmt.Errorf("testnet %s: IPv4 subnet %s cannot hold a bridge and %d pods", cfg.Prefix, cfg.Subnet4, cfg.Pods)
	}
	if !cfg.Subnet6.IsValid() || !cfg.Subnet6.Addr().Is6() || cfg.Subnet6.Addr().Is4In6() || 1<<hostBits(cfg.Subnet6) < cfg.Pods+2 {
		return fmt.Errorf("testnet %s: IPv6 subnet %s cannot hold a bridge and %d pods", cfg.Prefix, cfg.Subnet6, cfg.Pods)
	}
	if cfg.Uplink {
		return validateUplink(cfg)
	}
	return nil
}

// hostBits returns the number of host bits of p, capped at 16: enough for
// any topology New accepts.
func hostBits(p netip.Prefix) int {
	return min(p.Addr().BitLen()-p.Bits(), 16)
}

func (n *Net) build() error {
	cfg := n.cfg
	if err := n.makeCgroupParent(); err != nil {
		return err
	}
	ip4 := cfg.Subnet4.Masked().Addr().Next()
	ip6 := cfg.Subnet6.Masked().Addr().Next()
	node, err := n.newPod(cfg.Prefix+"-node", cfg.Prefix+"-host", ip4, ip6)
	if err != nil {
		return err
	}
	node.PodVeth = n.Bridge
	n.Node = node
	if err := netns.Do(node.NetnsPath, func() error {
		var err error
		n.node, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	}); err != nil {
		return fmt.Errorf("netlink handle in %s: %w", node.Name, err)
	}
	if err := n.makeBridge(); err != nil {
		return err
	}
	for i := range cfg.Pods {
		ip4, ip6 = ip4.Next(), ip6.Next()
		name := fmt.Sprintf("%s-p%d", cfg.Prefix, i)
		p, err := n.newPod(name, name, ip4, ip6)
		if err != nil {
			return err
		}
		n.Pods = append(n.Pods, p)
		if err := n.plug(p, fmt.Sprintf("%sv%d", cfg.Prefix, i)); err != nil {
			return err
		}
	}
	// The bridge takes the smallest MAC of its ports: read it once all
	// are in.
	br, err := n.node.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", n.Bridge, err)
	}
	node.PodMAC = br.Attrs().HardwareAddr
	if cfg.Uplink {
		if err := n.buildUplink(); err != nil {
			return err
		}
	}
	return n.waitUsable()
}

func (n *Net) makeCgroupParent() error {
	n.cgroupParent = n.cfg.CgroupParent
	if n.cgroupParent == "" {
		mnt, err := cgroup.Mount2()
		if err != nil {
			return err
		}
		n.cgroupParent = defaultCgroupParent(mnt, n.cfg.Prefix)
	}
	err := os.Mkdir(n.cgroupParent, 0o755)
	switch {
	case err == nil:
		n.createdParent = true
	case errors.Is(err, os.ErrExist) && n.cfg.CgroupParent == "":
		return fmt.Errorf("cgroup %s exists: a topology with prefix %q is running, or an earlier run crashed (testnet.Sweep(%q) removes it)",
			n.cgroupParent, n.cfg.Prefix, n.cfg.Prefix)
	case errors.Is(err, os.ErrExist):
	default:
		return fmt.Errorf("create cgroup %s: %w", n.cgroupParent, err)
	}
	return cgroup.IsCgroup2Dir(n.cgroupParent)
}

func defaultCgroupParent(mnt, prefix string) string {
	return filepath.Join(mnt, "patu-test-"+prefix)
}

// newPod creates a network namespace with lo up and DAD off, and a cgroup.
func (n *Net) newPod(name, cgName string, ip4, ip6 netip.Addr) (*Pod, error) {
	p := &Pod{Name: name, IPv4: ip4, IPv6: ip6, net: n}
	p.CgroupDir = filepath.Join(n.cgroupParent, cgName)
	if err := os.Mkdir(p.CgroupDir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	n.cgdirs = append(n.cgdirs, p.CgroupDir)
	fd, err := os.Open(p.CgroupDir)
	if err != nil {
		return nil, fmt.Errorf("open cgroup: %w", err)
	}
	p.cgroupFD = fd
	n.files = append(n.files, fd)
	if p.NetnsPath, err = netns.Create(name); err != nil {
		if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("%w: a topology with prefix %q is running, or an earlier run crashed (testnet.Sweep(%q) removes it)",
				err, n.cfg.Prefix, n.cfg.Prefix)
		}
		return nil, err
	}
	n.netns = append(n.netns, name)
	err = p.Do(func() error {
		// DAD off before any interface arrives here: an interface moved
		// into a namespace takes its IPv6 settings from "default", and a
		// tentative address would make the first connects fail.
		for _, k := range []string{"ipv6/conf/all/accept_dad", "ipv6/conf/default/accept_dad"} {
			if err := os.WriteFile("/proc/sys/net/"+k, []byte("0"), 0); err != nil {
				return fmt.Errorf("sysctl %s: %w", k, err)
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("set up netns %s: %w", name, err)
	}
	return p, nil
}

func (n *Net) makeBridge() error {
	off := false
	br := &netlink.Bridge{
		LinkAttrs: netlink.LinkAttrs{Name: n.Bridge},
		// Snooping would need an MLD querier before IPv6 multicast (and
		// with it neighbour discovery) flows reliably on a fresh bridge.
		MulticastSnooping: &off,
	}
	if err := n.node.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s: %w", n.Bridge, err)
	}
	if err := addAddrs(n.node, br, n.Node, n.cfg); err != nil {
		return fmt.Errorf("bridge %s: %w", n.Bridge, err)
	}
	if err := n.node.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", n.Bridge, err)
	}
	return nil
}

// plug connects pod p to the bridge with a veth pair whose pod end is
// created directly in p's namespace as eth0, and configures eth0.
func (n *Net) plug(p *Pod, hostVeth string) error {
	nsf, err := os.Open(p.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", p.Name, err)
	}
	defer nsf.Close()
	br, err := n.node.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", n.Bridge, err)
	}
	p.HostVeth, p.PodVeth = hostVeth, "eth0"
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostVeth, MasterIndex: br.Attrs().Index},
		PeerName:      p.PodVeth,
		PeerNamespace: netlink.NsFd(nsf.Fd()),
	}
	if err := n.node.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", hostVeth, err)
	}
	host, err := n.node.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", hostVeth, err)
	}
	p.HostIfindex = host.Attrs().Index
	p.HostMAC = host.Attrs().HardwareAddr
	if err := n.node.LinkSetUp(host); err != nil {
		return fmt.Errorf("set veth %s up: %w", hostVeth, err)
	}
	return p.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
		eth, err := h.LinkByName(p.PodVeth)
		if err != nil {
			return fmt.Errorf("find %s: %w", p.PodVeth, err)
		}
		p.PodMAC = eth.Attrs().HardwareAddr
		if err := addAddrs(h, eth, p, n.cfg); err != nil {
			return fmt.Errorf("%s: %w", p.PodVeth, err)
		}
		if err := h.LinkSetUp(eth); err != nil {
			return fmt.Errorf("set %s up: %w", p.PodVeth, err)
		}
		for _, gw := range []netip.Addr{n.Node.IPv4, n.Node.IPv6} {
			r := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}
			if err := h.RouteAdd(r); err != nil {
				return fmt.Errorf("default route via %s: %w", gw, err)
			}
		}
		return nil
	})
}

// addAddrs gives link the IPv4 and IPv6 address of p, with DAD off.
func addAddrs(h *netlink.Handle, link netlink.Link, p *Pod, cfg Config) error {
	return addPrefixes(h, link, netip.PrefixFrom(p.IPv4, cfg.Subnet4.Bits()), netip.PrefixFrom(p.IPv6, cfg.Subnet6.Bits()))
}

// waitUsable waits until every veth and the bridge are operationally up
// and no address is tentative, so the first packet of a test is not lost.
func (n *Net) waitUsable() error {
	deadline := time.Now().Add(usableTimeout)
	for _, p := range n.Pods {
		for _, c := range []struct {
			p    *Pod
			link string
		}{
			{n.Node, p.HostVeth},
			{p, p.PodVeth},
		} {
			if err := waitLink(c.p, c.link, deadline); err != nil {
				return err
			}
		}
	}
	if len(n.Pods) > 0 {
		// A bridge is up once one of its ports forwards.
		if err := waitLink(n.Node, n.Bridge, deadline); err != nil {
			return err
		}
	}
	return nil
}

func waitLink(p *Pod, name string, deadline time.Time) error {
	return p.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
		for {
			state, err := linkState(h, name)
			if err != nil {
				return err
			}
			if state == "" {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s in %s not usable after %s: %s", name, p.Name, usableTimeout, state)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// linkState returns why link name is not usable yet, or "" when it is.
func linkState(h *netlink.Handle, name string) (string, error) {
	link, err := h.LinkByName(name)
	if err != nil {
		return "", fmt.Errorf("find %s: %w", name, err)
	}
	if st := link.Attrs().OperState; st != netlink.OperUp {
		return "operstate " + st.String(), nil
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return "", fmt.Errorf("list addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			return "address " + a.IPNet.String() + " tentative (flags " + strconv.Itoa(a.Flags) + ")", nil
		}
	}
	return "", nil
}

// retryDump runs a netlink dump again when the kernel reports that the
// table changed while it was dumped (the results are then inconsistent).
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		res T
		err error
	)
	for range 10 {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	return res, err
}

// Close removes everything New created: it kills the processes left in the
// topology's cgroups, deletes the links and namespaces, and removes the
// cgroups. Closing twice is a no-op.
func (n *Net) Close() error {
	if n.closed {
		return nil
	}
	n.closed = true
	var errs []error
	// Processes first: one left in a namespace keeps it, and its veth,
	// alive after the namespace file is gone.
	for _, dir := range n.cgdirs {
		if err := killCgroup(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if n.node != nil {
		// Deleting the links explicitly, rather than with their namespaces,
		// removes them now even when a lingering socket holds a pod's
		// namespace (a socket in LAST-ACK can do that for minutes).
		for _, p := range n.Pods {
			if p.HostVeth == "" {
				continue
			}
			if err := delLink(n.node, p.HostVeth); err != nil {
				errs = append(errs, err)
			}
		}
		if err := delLink(n.node, n.Bridge); err != nil {
			errs = append(errs, err)
		}
		if n.cfg.Uplink {
			if err := delLink(n.node, n.cfg.Prefix+"up"); err != nil {
				errs = append(errs, err)
			}
		}
		n.node.Close()
	}
	for i := len(n.netns) - 1; i >= 0; i-- {
		if err := netns.Delete(n.netns[i]); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range n.files {
		f.Close()
	}
	for _, dir := range n.cgdirs {
		if err := cgroup.Remove(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if n.createdParent {
		if err := cgroup.Remove(n.cgroupParent); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func delLink(h *netlink.Handle, name string) error {
	link, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// killCgroup kills every process in the cgroup tree at dir and waits until
// they are gone. A missing dir is not an error.
func killCgroup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// cgroup.kill (5.14+) kills the whole subtree, including processes
	// forked while it runs.
	err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
		err = signalTree(dir)
	}
	if err != nil {
		return fmt.Errorf("kill processes in cgroup %s: %w", dir, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		populated, err := isPopulated(dir)
		if err != nil || !populated {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes in cgroup %s still alive 5s after SIGKILL", dir)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func signalTree(dir string) error {
	var errs []error
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		pids, err := cgroup.Procs(path)
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		for _, pid := range pids {
			if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
			}
		}
		return nil
	})
	return errors.Join(errs...)
}

// isPopulated reads the "populated" key of cgroup.events: 1 while a process
// lives in the cgroup or below.
func isPopulated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("read %s/cgroup.events: %w", dir, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("%s/cgroup.events has no populated key", dir)
}

// Sweep removes what a topology with this prefix left behind when its
// process died before Close: processes in its cgroups, its namespaces and
// its cgroup directories. Only the default CgroupParent is known to it.
// Nothing left is not an error.
func Sweep(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("testnet sweep: invalid prefix %q", prefix)
	}
	var errs []error
	mnt, err := cgroup.Mount2()
	if err != nil {
		errs = append(errs, err)
	} else {
		parent := defaultCgroupParent(mnt, prefix)
		if err := killCgroup(parent); err != nil {
			errs = append(errs, err)
		}
		if err := cgroup.Remove(parent); err != nil {
			errs = append(errs, err)
		}
	}
	entries, err := os.ReadDir(netns.RunDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list %s: %w", netns.RunDir, err))
	}
	own := regexp.MustCompile(`^` + prefix + `-(node|ext|p[0-9]+)$`)
	for _, e := range entries {
		if own.MatchString(e.Name()) {
			if err := netns.Delete(e.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("testnet sweep %s: %w", prefix, err)
	}
	return nil
}
