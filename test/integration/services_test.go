package integration

import (
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
)

func grepLines(s, re string) string {
	r := regexp.MustCompile(re)
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if r.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestServices: connections from a pod to a Service's cluster IP, to a
// hostPort on the node's address and to a NodePort, on a node path as
// kube-proxy (iptables mode) and the portmap plugin write it. Patu is given
// no Service information. Translated connections between two pods of the
// node take the packet path (matched by the client's address, port and
// initial sequence number); masqueraded ones (a NodePort, a pod reaching
// itself through its Service) and ones to a backend outside the node stay
// on the normal path, counted. Every connection is intact on every path,
// and netfilter drops nothing as INVALID.
func TestServices(t *testing.T) {
	for _, m := range []mode{bridgePath, packetPath} {
		t.Run(string(m), func(t *testing.T) {
			cfg := netConfig("itv", 13, 3)
			cfg.Uplink = true
			cfg.Uplink4 = netip.MustParsePrefix("10.201.113.0/24")
			cfg.Uplink6 = netip.MustParsePrefix("fd00:201:113::/64")
			e := setupNet(t, cfg, m, bpf.Options{CloseGrace: 2 * time.Second})
			client, server, server2, ext := e.net.Pods[0], e.net.Pods[1], e.net.Pods[2], e.net.Ext
			const (
				svcPort   = 80
				target    = 7040
				nodePort  = 30080
				hostPort  = 8040
				hairpin   = 81
				remote    = 82
				twoBack   = 83
				hostPortC = 7041
			)
			vip4, vip6 := netip.MustParseAddr("10.201.111.200"), netip.MustParseAddr("fd00:201:ff13::ff00")
			var extra []nodepath.Service
			var hps []nodepath.HostPort
			for _, f := range []struct {
				vip                              netip.Addr
				server, server2, client, ext, id netip.Addr
			}{
				{vip4, server.IPv4, server2.IPv4, client.IPv4, ext.IPv4, netip.Addr{}},
				{vip6, server.IPv6, server2.IPv6, client.IPv6, ext.IPv6, netip.Addr{}},
			} {
				extra = append(extra,
					nodepath.Service{Name: "test/web:http", ClusterIP: f.vip, Port: svcPort, NodePort: nodePort, TargetPort: target,
						Endpoints: []netip.Addr{f.server}},
					nodepath.Service{Name: "test/both:http", ClusterIP: f.vip, Port: twoBack, TargetPort: target,
						Endpoints: []netip.Addr{f.server, f.server2}},
					nodepath.Service{Name: "test/self:http", ClusterIP: f.vip, Port: hairpin, TargetPort: target,
						Endpoints: []netip.Addr{f.client}},
					nodepath.Service{Name: "test/remote:http", ClusterIP: f.vip, Port: remote, TargetPort: target,
						Endpoints: []netip.Addr{f.ext}},
				)
				hps = append(hps, nodepath.HostPort{ContainerID: "itv-server", Proto: "tcp", HostPort: hostPort,
					PodIP: f.server, PodPort: hostPortC})
			}
			undo, err := nodepath.Apply(e.net.Node.NetnsPath, nodepath.Config{Bridge: e.net.Bridge,
				PodSubnet4: cfg.Subnet4, PodSubnet6: cfg.Subnet6,
				ServiceCIDR4: netip.MustParsePrefix("10.201.96.0/20"), ServiceCIDR6: netip.MustParsePrefix("fd00:201:ff13::/112"),
				RemotePods4: netip.MustParsePrefix("10.201.112.0/24"), RemotePods6: netip.MustParsePrefix("fd00:201:ff14::/112"),
				Services: 20, Extra: extra, HostPorts: hps,
				Pods: []nodepath.Pod{{ID: "itv-client", IPs: []netip.Addr{client.IPv4, client.IPv6}},
					{ID: "itv-server", IPs: []netip.Addr{server.IPv4, server.IPv6}}},
			})
			if err != nil {
				t.Fatalf("node path: %v", err)
			}
			t.Cleanup(func() { undo() })
			// A pod reaching itself through its Service comes back out of
			// the bridge port it came in by: kubelet (or the bridge plugin's
			// hairpinMode) allows that on every pod's port.
			if err := netns.Do(e.net.Node.NetnsPath, func() error {
				l, err := netlink.LinkByName(client.HostVeth)
				if err != nil {
					return err
				}
				return netlink.LinkSetHairpin(l, true)
			}); err != nil {
				t.Fatalf("hairpin mode: %v", err)
			}
			for _, p := range []*testnet.Pod{server, server2, client, ext} {
				for _, ip := range []netip.Addr{p.IPv4, p.IPv6} {
					e.serve(p, addr(ip, target), "echo")
				}
			}
			for _, ip := range []netip.Addr{server.IPv4, server.IPv6} {
				e.serve(server, addr(ip, hostPortC), "echo")
			}

			node4, node6 := e.net.Node.IPv4, e.net.Node.IPv6
			cases := []struct {
				name    string
				to      []netip.AddrPort
				matched bool // admitted through a translation on the packet path
			}{
				{"cluster IP", []netip.AddrPort{addr(vip4, svcPort), addr(vip6, svcPort)}, true},
				{"cluster IP, two backends", []netip.AddrPort{addr(vip4, twoBack), addr(vip6, twoBack)}, true},
				{"hostPort on the node's address", []netip.AddrPort{addr(node4, hostPort), addr(node6, hostPort)}, true},
				{"NodePort (masqueraded)", []netip.AddrPort{addr(node4, nodePort), addr(node6, nodePort)}, false},
				{"own Service (hairpin, masqueraded)", []netip.AddrPort{addr(vip4, hairpin), addr(vip6, hairpin)}, false},
				{"backend on another node", []netip.AddrPort{addr(vip4, remote), addr(vip6, remote)}, false},
			}
			s0, err := nodepath.ReadStats(e.net.Node.NetnsPath)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cases {
				for _, to := range c.to {
					l0 := e.local()
					res, err := e.client(client, 10*time.Second, "--connect", to.String(), "--mode", "echo",
						"--conns", "40", "--parallel", "4", "--min", "1", "--max", "1048576", "--seed", "40")
					if err != nil {
						// What the node's netfilter did, to tell a broken
						// rule set from a broken path.
						netns.Do(e.net.Node.NetnsPath, func() error {
							out, _ := exec.Command("iptables-save", "-c", "-t", "nat").CombinedOutput()
							t.Logf("%s", grepLines(string(out), "web|SEP|KUBE-SERVICES -d"))
							out, _ = exec.Command("conntrack", "-L").CombinedOutput()
							t.Logf("%s", out)
							out, _ = exec.Command("sysctl", "net.bridge.bridge-nf-call-iptables", "net.ipv4.ip_forward").CombinedOutput()
							t.Logf("%s", out)
							return nil
						})
					}
					requireClean(t, res, err)
					l1 := e.local()
					nat, notMatched := l1.AdmittedNAT-l0.AdmittedNAT, l1.NotMatched-l0.NotMatched
					backlog := l1.BacklogPackets - l0.BacklogPackets
					t.Logf("%s %s: %d bytes echoed; admitted %d (%d through a translation), answers not matched %d; %d packets by the peer's veth",
						c.name, to, res.Bytes, l1.Admitted-l0.Admitted, nat, notMatched, backlog)
					if m != packetPath {
						continue
					}
					if c.matched && nat < 40 {
						t.Errorf("%s %s: %d of 40 connections admitted through a translation", c.name, to, nat)
					}
					if carried := l1.RedirectBytes - l0.RedirectBytes; c.matched && carried < uint64(res.Bytes) {
						t.Errorf("%s %s: the packet path carried %d bytes of %d echoed", c.name, to, carried, res.Bytes)
					}
					// Echoes of up to 1 MiB: translated bulk directions
					// take the peer's veth too, with their rewritten MACs.
					if c.matched && backlog == 0 {
						t.Errorf("%s %s: no translated direction went by the peer's veth", c.name, to)
					}
					if !c.matched && l1.Admitted != l0.Admitted {
						t.Errorf("%s %s: %d connections admitted, want none", c.name, to, l1.Admitted-l0.Admitted)
					}
				}
			}
			s1, err := nodepath.ReadStats(e.net.Node.NetnsPath)
			if err != nil {
				t.Fatal(err)
			}
			if d := s1.Sub(s0); d.InvalidDropped != 0 {
				t.Errorf("kube-proxy dropped %d packets as INVALID", d.InvalidDropped)
			}
			if m == packetPath {
				if l := e.local(); l.NotMatched == 0 || l.NATFailed != 0 {
					t.Errorf("answers not matched %d (want some: masquerade), rewrites failed %d", l.NotMatched, l.NATFailed)
				}
				deadline := time.Now().Add(8 * time.Second)
				for len(established(t, e.net.Node.NetnsPath, client, server)) > 0 {
					if time.Now().After(deadline) {
						t.Fatalf("conntrack entries left ESTABLISHED after the grace: %q", established(t, e.net.Node.NetnsPath, client, server))
					}
					time.Sleep(250 * time.Millisecond)
				}
			}
		})
	}
}
