package nodepath

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/patu-dev/patu/netns"
)

// Config describes the node whose normal path Apply builds.
type Config struct {
	// Bridge is the pods' bridge in the node namespace. The portmap plugin
	// sets route_localnet on it.
	Bridge string
	// PodSubnet4 and PodSubnet6 are this node's pod subnets (the bridge
	// plugin's ipMasq exempts them).
	PodSubnet4, PodSubnet6 netip.Prefix
	// ClusterCIDR4 and ClusterCIDR6 are the whole cluster's pod networks
	// (kube-proxy's --cluster-cidr). Default: the pod subnets.
	ClusterCIDR4, ClusterCIDR6 netip.Prefix
	// ServiceCIDR4 and ServiceCIDR6 hold the synthetic services' cluster
	// IPs; RemotePods4 and RemotePods6 their endpoints (pods on other
	// nodes). Neither is routed anywhere: only new connections to them
	// would match, and the benchmark makes none.
	ServiceCIDR4, ServiceCIDR6 netip.Prefix
	RemotePods4, RemotePods6   netip.Prefix
	// Services is the number of kube-proxy services per address family,
	// each with 0-3 endpoints; every tenth is also a NodePort. Default 200.
	Services int
	// NetName is the CNI network name in the plugins' chain names and
	// comments. Default "cbr0".
	NetName string
	// Pods are the local pods, for the bridge plugin's ipMasq chains.
	Pods []Pod
	// Extra are services given explicitly, rendered after the synthetic
	// ones: services whose endpoints are pods a test runs.
	Extra []Service
	// HostPorts are the portmap plugin's mappings.
	HostPorts []HostPort
}

// Service is one service port as kube-proxy renders it in iptables mode.
type Service struct {
	Name      string     // namespace/name:port
	ClusterIP netip.Addr // its family picks the table
	// Port is the service port; 0 takes every port, and TargetPort 0
	// keeps it (not something kube-proxy writes: for benchmarks whose
	// tools pick a fresh port each run).
	Port uint16
	// NodePort, when not 0, also makes it reachable on every local
	// address of the node at that port (masqueraded, as kube-proxy does
	// with externalTrafficPolicy Cluster).
	NodePort   uint16
	TargetPort uint16
	Endpoints  []netip.Addr
}

// Pod is a local pod as the CNI plugins saw it.
type Pod struct {
	ID  string // container (sandbox) ID
	IPs []netip.Addr
}

// HostPort is one portMappings entry of a pod.
type HostPort struct {
	ContainerID string
	Proto       string // "tcp" or "udp"
	// HostIP restricts the mapping to one node address; zero for all.
	HostIP   netip.Addr
	HostPort uint16
	PodIP    netip.Addr
	PodPort  uint16
}

func (h HostPort) proto() string { return strings.ToLower(h.Proto) }

func (cfg Config) withDefaults() (Config, error) {
	if cfg.Services == 0 {
		cfg.Services = 200
	}
	if cfg.NetName == "" {
		cfg.NetName = "cbr0"
	}
	if !cfg.ClusterCIDR4.IsValid() {
		cfg.ClusterCIDR4 = cfg.PodSubnet4
	}
	if !cfg.ClusterCIDR6.IsValid() {
		cfg.ClusterCIDR6 = cfg.PodSubnet6
	}
	var errs []error
	for _, p := range []struct {
		name string
		p    netip.Prefix
		v6   bool
	}{
		{"PodSubnet4", cfg.PodSubnet4, false}, {"PodSubnet6", cfg.PodSubnet6, true},
		{"ClusterCIDR4", cfg.ClusterCIDR4, false}, {"ClusterCIDR6", cfg.ClusterCIDR6, true},
		{"ServiceCIDR4", cfg.ServiceCIDR4, false}, {"ServiceCIDR6", cfg.ServiceCIDR6, true},
		{"RemotePods4", cfg.RemotePods4, false}, {"RemotePods6", cfg.RemotePods6, true},
	} {
		if !p.p.IsValid() || p.p.Addr().Is6() != p.v6 || p.p.Addr().Is4In6() {
			errs = append(errs, fmt.Errorf("%s %v: want an IPv%s prefix", p.name, p.p, map[bool]string{false: "4", true: "6"}[p.v6]))
		}
	}
	if cfg.Services < 0 || cfg.Services > 4000 {
		errs = append(errs, fmt.Errorf("services %d: want 0-4000", cfg.Services))
	}
	for _, h := range cfg.HostPorts {
		if p := h.proto(); p != "tcp" && p != "udp" && p != "sctp" {
			errs = append(errs, fmt.Errorf("hostPort %d: protocol %q", h.HostPort, h.Proto))
		}
		if h.ContainerID == "" || !h.PodIP.IsValid() || h.HostPort == 0 || h.PodPort == 0 {
			errs = append(errs, fmt.Errorf("hostPort %+v: want a container ID, pod IP and both ports", h))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("nodepath config: %w", err)
	}
	return cfg, nil
}

// sysctls are the node settings Apply makes, relative to /proc/sys/net.
// The bridge one is filled in by Apply.
func sysctls(cfg Config) []string {
	s := []string{
		"bridge/bridge-nf-call-iptables",
		"bridge/bridge-nf-call-ip6tables",
		"ipv4/ip_forward",
		"ipv6/conf/all/forwarding",
		// kube-proxy (iptables mode, localhost NodePorts) sets it for all.
		"ipv4/conf/all/route_localnet",
	}
	if cfg.Bridge != "" {
		s = append(s, "ipv4/conf/"+cfg.Bridge+"/route_localnet")
	}
	return s
}

// Apply builds the normal path of a real node in the network namespace at
// nodeNetns (a path such as /run/netns/NAME) and returns a function that
// restores what it changed there: the filter and nat tables of both
// families and the sysctls. On error nothing is left changed.
func Apply(nodeNetns string, cfg Config) (undo func() error, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	v4 := cfg.family(false).rules(cfg)
	v6 := cfg.family(true).rules(cfg)
	if err := ensureBrNetfilter(nodeNetns); err != nil {
		return nil, err
	}

	var undos []func() error
	undoAll := func() error {
		var errs []error
		for i := len(undos) - 1; i >= 0; i-- {
			errs = append(errs, undos[i]())
		}
		undos = nil
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			if uerr := undoAll(); uerr != nil {
				err = errors.Join(err, fmt.Errorf("roll back: %w", uerr))
			}
		}
	}()

	for _, t := range []struct{ save, restore, rules string }{
		{"iptables-save", "iptables-restore", v4},
		{"ip6tables-save", "ip6tables-restore", v6},
	} {
		before, err := run(nodeNetns, nil, t.save, "-t", "filter")
		if err != nil {
			return nil, err
		}
		natBefore, err := run(nodeNetns, nil, t.save, "-t", "nat")
		if err != nil {
			return nil, err
		}
		prev := emptyTable("filter", before) + emptyTable("nat", natBefore)
		restore := t.restore
		undos = append(undos, func() error {
			_, err := run(nodeNetns, []byte(prev), restore)
			return err
		})
		if _, err := run(nodeNetns, []byte(t.rules), t.restore); err != nil {
			return nil, err
		}
	}

	for _, key := range sysctls(cfg) {
		old, err := setSysctl(nodeNetns, key, "1")
		if err != nil {
			return nil, err
		}
		k := key
		undos = append(undos, func() error {
			_, err := setSysctl(nodeNetns, k, old)
			return err
		})
	}
	return undoAll, nil
}

// emptyTable returns a save of table, or an empty table when save has
// none: restoring it flushes what Apply added.
func emptyTable(table, save string) string {
	if strings.Contains(save, "*"+table) {
		return save
	}
	return "*" + table + "\nCOMMIT\n"
}

// ensureBrNetfilter makes sure bridge netfilter exists: built in, or the
// module loaded. It is never unloaded again (see the package comment).
func ensureBrNetfilter(nodeNetns string) error {
	has := func() bool {
		ok := false
		netns.Do(nodeNetns, func() error {
			_, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables")
			ok = err == nil
			return nil
		})
		return ok
	}
	if has() {
		return nil
	}
	if out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput(); err != nil {
		return fmt.Errorf("bridge netfilter: not built in, and modprobe br_netfilter failed: %v: %s", err, bytes.TrimSpace(out))
	}
	if !has() {
		return errors.New("bridge netfilter: /proc/sys/net/bridge missing after modprobe br_netfilter")
	}
	return nil
}

// setSysctl writes value to /proc/sys/net/key in the namespace and returns
// the previous value.
func setSysctl(nsPath, key, value string) (old string, err error) {
	p := filepath.Join("/proc/sys/net", key)
	err = netns.Do(nsPath, func() error {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		old = strings.TrimSpace(string(b))
		return os.WriteFile(p, []byte(value), 0)
	})
	if err != nil {
		return "", fmt.Errorf("sysctl net.%s=%s in %s: %w", strings.ReplaceAll(key, "/", "."), value, nsPath, err)
	}
	return old, nil
}

// run runs name in the network namespace with stdin, through nsenter so
// that the tool's process is in the namespace from its start.
func run(nsPath string, stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + nsPath, name}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s in %s: %w: %s", name, nsPath, err, firstLines(errOut.String(), 5))
	}
	return out.String(), nil
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "…")
	}
	return strings.Join(lines, "; ")
}

// Backend is what the distribution's iptables is: "nf_tables" or "legacy".
func Backend() (string, error) {
	out, err := exec.Command("iptables", "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables --version: %w: %s", err, bytes.TrimSpace(out))
	}
	if m := regexp.MustCompile(`\((\w+)\)`).FindSubmatch(out); m != nil {
		return string(m[1]), nil
	}
	return "legacy", nil
}

// Stats is what the node's netfilter did, read from its counters: proof
// that traffic took the normal path.
type Stats struct {
	// Rules is the number of rules in the filter and nat tables, both
	// families.
	Rules int `json:"rules"`
	// DNATPackets counts packets (first packets of connections) the
	// portmap plugin's DNAT rules translated, both families.
	DNATPackets uint64 `json:"hostport_dnat_packets"`
	// EstablishedPackets counts forwarded packets accepted by kube-proxy's
	// conntrack rule in KUBE-FORWARD: every packet of a known flow.
	EstablishedPackets uint64 `json:"forward_established_packets"`
	// ForwardPackets counts packets that entered the FORWARD chain (the
	// KUBE-FORWARD jump), both families.
	ForwardPackets uint64 `json:"forward_packets"`
	// InvalidDropped counts packets kube-proxy's rule dropped because
	// conntrack found them INVALID (out of their flow's window), both
	// families.
	InvalidDropped uint64 `json:"invalid_dropped_packets"`
	// Conntrack is the number of conntrack entries in the namespace.
	Conntrack int `json:"conntrack_entries"`
}

// Sub returns s - o for the counters (Rules and Conntrack are kept).
func (s Stats) Sub(o Stats) Stats {
	s.DNATPackets -= o.DNATPackets
	s.EstablishedPackets -= o.EstablishedPackets
	s.ForwardPackets -= o.ForwardPackets
	s.InvalidDropped -= o.InvalidDropped
	return s
}

var counterRE = regexp.MustCompile(`^\[(\d+):(\d+)\] (-A .*)$`)

// ReadStats reads the counters of the rules Apply installed in nodeNetns.
func ReadStats(nodeNetns string) (Stats, error) {
	var s Stats
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out, err := run(nodeNetns, nil, save, "-c")
		if err != nil {
			return s, err
		}
		for _, line := range strings.Split(out, "\n") {
			m := counterRE.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			s.Rules++
			pkts, _ := strconv.ParseUint(m[1], 10, 64)
			rule := m[3]
			switch {
			case strings.HasPrefix(rule, "-A CNI-DN-") && strings.Contains(rule, "-j DNAT"):
				s.DNATPackets += pkts
			case strings.HasPrefix(rule, "-A KUBE-FORWARD") && strings.Contains(rule, "RELATED,ESTABLISHED"):
				s.EstablishedPackets += pkts
			case strings.HasPrefix(rule, "-A FORWARD") && strings.Contains(rule, "-j KUBE-FORWARD"):
				s.ForwardPackets += pkts
			case strings.HasPrefix(rule, "-A KUBE-FORWARD") && strings.Contains(rule, "INVALID -j DROP"):
				s.InvalidDropped += pkts
			}
		}
	}
	err := netns.Do(nodeNetns, func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return err
		}
		s.Conntrack, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	if err != nil {
		return s, fmt.Errorf("conntrack count in %s: %w", nodeNetns, err)
	}
	return s, nil
}
