package nodepath

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
)

// kubeMasqMark is kube-proxy's masquerade mark (bit 14), portmapMasqMark
// the portmap plugin's default (markMasqBit 13).
const (
	kubeMasqMark    = "0x4000/0x4000"
	portmapMasqMark = "0x2000/0x2000"
)

// family is what differs between the IPv4 and IPv6 rule sets.
type family struct {
	v6                       bool
	podSubnet, cluster, svc  netip.Prefix
	remote                   netip.Prefix
	pods                     []podAddr
	hostPorts                []HostPort
	rejectProto, localhostIP string
}

type podAddr struct {
	id string
	ip netip.Addr
}

// Rules returns the iptables-restore input Apply loads for IPv4 and for
// IPv6: the filter and nat tables, complete.
func Rules(cfg Config) (v4, v6 string, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return "", "", err
	}
	return cfg.family(false).rules(cfg), cfg.family(true).rules(cfg), nil
}

func (cfg Config) family(v6 bool) family {
	f := family{v6: v6, podSubnet: cfg.PodSubnet4, cluster: cfg.ClusterCIDR4, svc: cfg.ServiceCIDR4,
		remote: cfg.RemotePods4, rejectProto: "icmp-port-unreachable", localhostIP: "127.0.0.1"}
	if v6 {
		f.podSubnet, f.cluster, f.svc, f.remote = cfg.PodSubnet6, cfg.ClusterCIDR6, cfg.ServiceCIDR6, cfg.RemotePods6
		f.rejectProto, f.localhostIP = "icmp6-port-unreachable", "::1"
	}
	for _, p := range cfg.Pods {
		for _, ip := range p.IPs {
			if ip.Is6() == v6 {
				f.pods = append(f.pods, podAddr{id: p.ID, ip: ip})
			}
		}
	}
	for _, h := range cfg.HostPorts {
		if h.PodIP.Is6() == v6 {
			f.hostPorts = append(f.hostPorts, h)
		}
	}
	return f
}

func (f family) hostBits() int {
	if f.v6 {
		return 128
	}
	return 32
}

// host is ip as a single-address network, as iptables-save prints it.
func (f family) host(ip netip.Addr) string {
	return fmt.Sprintf("%s/%d", ip, f.hostBits())
}

func (f family) ipPort(ip netip.Addr, port uint16) string {
	return netip.AddrPortFrom(ip, port).String()
}

// nth returns the n-th address of p (0 is p's first address).
func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr().As16()
	carry := n
	for i := 15; i >= 0 && carry > 0; i-- {
		v := int(a[i]) + carry
		a[i] = byte(v)
		carry = v >> 8
	}
	out := netip.AddrFrom16(a)
	if p.Addr().Is4() {
		out = out.Unmap()
	}
	return out
}

// kubeChain names a kube-proxy chain the way kube-proxy does: the prefix
// and 16 base32 characters of a SHA-256 of what the chain is for.
func kubeChain(prefix, of string) string {
	sum := sha256.Sum256([]byte(of))
	return prefix + base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// cniChain names a CNI chain the way the plugins' formatChainName does:
// "CNI-" + prefix + hex of a SHA-512, cut to 28 characters.
func cniChain(prefix, netName, id string) string {
	sum := sha512.Sum512([]byte(netName + id))
	return fmt.Sprintf("CNI-%s%x", prefix, sum)[:28]
}

// service is one synthetic Kubernetes service port.
type service struct {
	name      string // namespace/name:port, as kube-proxy's comments say
	proto     string
	clusterIP netip.Addr
	port      uint16
	nodePort  uint16 // 0: ClusterIP only
	endpoints []netip.Addr
	target    uint16
}

func (f family) services(cfg Config) []service {
	protos := []string{"tcp", "tcp", "tcp", "udp"}
	ports := []uint16{80, 443, 8080, 53, 9090, 6379, 5432, 3000}
	var out []service
	ep := 0
	for i := range cfg.Services {
		s := service{
			name:      fmt.Sprintf("bench-ns%d/svc%d:p%d", i%7, i, i%3),
			proto:     protos[i%len(protos)],
			clusterIP: nth(f.svc, 10+i),
			port:      ports[i%len(ports)],
			target:    8000 + uint16(i%50),
		}
		if i%10 == 3 {
			s.nodePort = 30000 + uint16(i)
		}
		// 1 to 3 endpoints, and every 25th service none (kube-proxy then
		// REJECTs in the filter table instead).
		n := i%3 + 1
		if i%25 == 24 {
			n = 0
		}
		for range n {
			ep++
			s.endpoints = append(s.endpoints, nth(f.remote, ep))
		}
		out = append(out, s)
	}
	for _, x := range cfg.Extra {
		if x.ClusterIP.Is6() != f.v6 {
			continue
		}
		out = append(out, service{name: x.Name, proto: "tcp", clusterIP: x.ClusterIP, port: x.Port, nodePort: x.NodePort,
			endpoints: x.Endpoints, target: x.TargetPort})
	}
	return out
}

// rules renders the filter and nat tables of one family.
func (f family) rules(cfg Config) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	svcs := f.services(cfg)

	// filter: kube-proxy's and kubelet's chains. KUBE-FORWARD is where
	// conntrack runs on every forwarded packet.
	w("*filter")
	w(":INPUT ACCEPT [0:0]")
	w(":FORWARD ACCEPT [0:0]")
	w(":OUTPUT ACCEPT [0:0]")
	for _, c := range []string{"KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-KUBELET-CANARY",
		"KUBE-NODEPORTS", "KUBE-PROXY-CANARY", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"} {
		w(":%s - [0:0]", c)
	}
	w(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`)
	w(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	w(`-A INPUT -j KUBE-FIREWALL`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally visible service portals" -j KUBE-EXTERNAL-SERVICES`)
	w(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL`)
	w(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -j KUBE-FIREWALL`)
	if !f.v6 {
		w(`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`)
	}
	w(`-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark %s -j ACCEPT`, kubeMasqMark)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
	for _, s := range svcs {
		if len(s.endpoints) > 0 {
			continue
		}
		w(`-A KUBE-SERVICES -d %s -p %s -m comment --comment "%s has no endpoints" -m %s --dport %d -j REJECT --reject-with %s`,
			f.host(s.clusterIP), s.proto, s.name, s.proto, s.port, f.rejectProto)
		if s.nodePort != 0 {
			w(`-A KUBE-EXTERNAL-SERVICES -p %s -m comment --comment "%s has no endpoints" -m addrtype --dst-type LOCAL -m %s --dport %d -j REJECT --reject-with %s`,
				s.proto, s.name, s.proto, s.nodePort, f.rejectProto)
		}
	}
	w("COMMIT")

	// nat: kube-proxy first (it inserts its jumps at the top), then the
	// portmap and bridge plugins' jumps, as on a node where kube-proxy
	// started before the first pod.
	w("*nat")
	w(":PREROUTING ACCEPT [0:0]")
	w(":INPUT ACCEPT [0:0]")
	w(":OUTPUT ACCEPT [0:0]")
	w(":POSTROUTING ACCEPT [0:0]")
	chains := []string{"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK",
		"KUBE-KUBELET-CANARY", "KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-PROXY-CANARY", "KUBE-SERVICES"}
	dnByPod := map[string][]HostPort{}
	var dnOrder []string
	for _, h := range f.hostPorts {
		if _, ok := dnByPod[h.ContainerID]; !ok {
			dnOrder = append(dnOrder, h.ContainerID)
		}
		dnByPod[h.ContainerID] = append(dnByPod[h.ContainerID], h)
	}
	for _, id := range dnOrder {
		chains = append(chains, cniChain("DN-", cfg.NetName, id))
	}
	for _, p := range f.pods {
		chains = append(chains, cniChain("", cfg.NetName, p.id))
	}
	for _, s := range svcs {
		if len(s.endpoints) == 0 {
			continue
		}
		chains = append(chains, kubeChain("KUBE-SVC-", s.name+s.proto))
		if s.nodePort != 0 {
			chains = append(chains, kubeChain("KUBE-EXT-", s.name+s.proto))
		}
		for _, ep := range s.endpoints {
			chains = append(chains, kubeChain("KUBE-SEP-", s.name+s.proto+ep.String()))
		}
	}
	for _, c := range chains {
		w(":%s - [0:0]", c)
	}
	w(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`)
	w(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`)
	w(`-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ`)
	w(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	// The bridge plugin's ipMasq: one chain per pod address.
	for _, p := range f.pods {
		c := cniChain("", cfg.NetName, p.id)
		w(`-A POSTROUTING -s %s -m comment --comment "name: \"%s\" id: \"%s\"" -j %s`, f.host(p.ip), cfg.NetName, p.id, c)
	}
	for _, p := range f.pods {
		c := cniChain("", cfg.NetName, p.id)
		mcast := "224.0.0.0/4"
		if f.v6 {
			mcast = "ff00::/8"
		}
		w(`-A %s -d %s -m comment --comment "name: \"%s\" id: \"%s\"" -j ACCEPT`, c, f.podSubnet.Masked(), cfg.NetName, p.id)
		w(`-A %s ! -d %s -m comment --comment "name: \"%s\" id: \"%s\"" -j MASQUERADE`, c, mcast, cfg.NetName, p.id)
	}
	// portmap: the top-level chains, then per pod the multiport entry
	// into its CNI-DN chain and, per mapping, hairpin and localhost
	// SETMARK rules before the DNAT.
	w(`-A CNI-HOSTPORT-MASQ -m mark --mark %s -j MASQUERADE`, portmapMasqMark)
	w(`-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark %s`, portmapMasqMark)
	for _, id := range dnOrder {
		hps := dnByPod[id]
		dn := cniChain("DN-", cfg.NetName, id)
		comment := fmt.Sprintf(`dnat name: \"%s\" id: \"%s\"`, cfg.NetName, id)
		byProto := map[string][]string{}
		var protos []string
		for _, h := range hps {
			p := h.proto()
			if _, ok := byProto[p]; !ok {
				protos = append(protos, p)
			}
			byProto[p] = append(byProto[p], fmt.Sprint(h.HostPort))
		}
		for _, p := range protos {
			ports := byProto[p]
			for len(ports) > 0 { // multiport takes at most 15 ports
				n := min(15, len(ports))
				w(`-A CNI-HOSTPORT-DNAT -p %s -m comment --comment "%s" -m multiport --dports %s -j %s`, p, comment, strings.Join(ports[:n], ","), dn)
				ports = ports[n:]
			}
		}
		for _, h := range hps {
			base := fmt.Sprintf("-A %s -p %s", dn, h.proto())
			if h.HostIP.IsValid() {
				base += " -d " + f.host(h.HostIP)
			}
			w(`%s -s %s -m %s --dport %d -j CNI-HOSTPORT-SETMARK`, base, f.host(h.PodIP), h.proto(), h.HostPort)
			if !f.v6 {
				w(`%s -s %s -m %s --dport %d -j CNI-HOSTPORT-SETMARK`, base, f.host(netip.MustParseAddr(f.localhostIP)), h.proto(), h.HostPort)
			}
			w(`%s -m %s --dport %d -j DNAT --to-destination %s`, base, h.proto(), h.HostPort, f.ipPort(h.PodIP, h.PodPort))
		}
	}
	// kube-proxy.
	w(`-A KUBE-MARK-MASQ -j MARK --set-xmark %s`, kubeMasqMark)
	w(`-A KUBE-POSTROUTING -m mark ! --mark %s -j RETURN`, kubeMasqMark)
	w(`-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0`)
	w(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for _, s := range svcs {
		if len(s.endpoints) == 0 {
			continue
		}
		svc := kubeChain("KUBE-SVC-", s.name+s.proto)
		dport := fmt.Sprintf(" -m %s --dport %d", s.proto, s.port)
		if s.port == 0 {
			dport = "" // any port, kept by the DNAT (Service.Port 0)
		}
		w(`-A KUBE-SERVICES -d %s -p %s -m comment --comment "%s cluster IP"%s -j %s`,
			f.host(s.clusterIP), s.proto, s.name, dport, svc)
		w(`-A %s ! -s %s -d %s -p %s -m comment --comment "%s cluster IP"%s -j KUBE-MARK-MASQ`,
			svc, f.cluster.Masked(), f.host(s.clusterIP), s.proto, s.name, dport)
		for i, ep := range s.endpoints {
			sep := kubeChain("KUBE-SEP-", s.name+s.proto+ep.String())
			epPort := f.ipPort(ep, s.target)
			if s.target == 0 {
				epPort = ep.String()
			}
			if left := len(s.endpoints) - i; left > 1 {
				w(`-A %s -m comment --comment "%s -> %s" -m statistic --mode random --probability %.11f -j %s`,
					svc, s.name, epPort, 1/float64(left), sep)
			} else {
				w(`-A %s -m comment --comment "%s -> %s" -j %s`, svc, s.name, epPort, sep)
			}
			w(`-A %s -s %s -m comment --comment "%s" -j KUBE-MARK-MASQ`, sep, f.host(ep), s.name)
			w(`-A %s -p %s -m comment --comment "%s" -m %s -j DNAT --to-destination %s`, sep, s.proto, s.name, s.proto, epPort)
		}
		if s.nodePort != 0 {
			ext := kubeChain("KUBE-EXT-", s.name+s.proto)
			w(`-A KUBE-NODEPORTS -p %s -m comment --comment "%s" -m %s --dport %d -j %s`, s.proto, s.name, s.proto, s.nodePort, ext)
			w(`-A %s -m comment --comment "masquerade traffic for %s external destinations" -j KUBE-MARK-MASQ`, ext, s.name)
			w(`-A %s -j %s`, ext, svc)
		}
	}
	w(`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	w("COMMIT")
	return b.String()
}
