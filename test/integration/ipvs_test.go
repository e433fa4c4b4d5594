package integration

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/netns"
)

// TestServicesIPVS: a pod connecting to a ClusterIP that kube-proxy's IPVS
// mode serves: the cluster IPs on a dummy kube-ipvs0, an IPVS virtual
// server per Service port with the pods as masquerading (NAT) real
// servers, conntrack on for IPVS, bridge netfilter (IPVS un-NATs the
// bridged answers in FORWARD). Patu is told nothing of it: the answer names
// the client's address, port and initial sequence number as it does after
// iptables DNAT. Runs where the kernel has IPVS (Debian's kernels in the
// kernel matrix); this VM's kernel is built without it.
func TestServicesIPVS(t *testing.T) {
	if err := haveIPVS(); err != nil {
		t.Skipf("no IPVS here: %v", err)
	}
	for _, m := range []mode{bridgePath, packetPath} {
		t.Run(string(m), func(t *testing.T) {
			cfg := netConfig("itp", 15, 2)
			e := setupNet(t, cfg, m, bpf.Options{CloseGrace: 2 * time.Second})
			client, server := e.net.Pods[0], e.net.Pods[1]
			const (
				svcPort = 80
				target  = 7050
			)
			vip4, vip6 := netip.MustParseAddr("10.201.115.200"), netip.MustParseAddr("fd00:201:ff15::ff00")
			undo, err := nodepath.Apply(e.net.Node.NetnsPath, nodepath.Config{Bridge: e.net.Bridge,
				PodSubnet4: cfg.Subnet4, PodSubnet6: cfg.Subnet6,
				ServiceCIDR4: netip.MustParsePrefix("10.201.114.0/24"), ServiceCIDR6: netip.MustParsePrefix("fd00:201:ff16::/112"),
				RemotePods4: netip.MustParsePrefix("10.201.116.0/24"), RemotePods6: netip.MustParsePrefix("fd00:201:ff17::/112"),
				Services: 1,
				Pods: []nodepath.Pod{{ID: "itp-client", IPs: []netip.Addr{client.IPv4, client.IPv6}},
					{ID: "itp-server", IPs: []netip.Addr{server.IPv4, server.IPv6}}},
			})
			if err != nil {
				t.Fatalf("node path: %v", err)
			}
			t.Cleanup(func() { undo() })
			if err := netns.Do(e.net.Node.NetnsPath, func() error {
				return ipvsServices([]ipvsService{
					{vip: vip4, port: svcPort, backend: netip.AddrPortFrom(server.IPv4, target)},
					{vip: vip6, port: svcPort, backend: netip.AddrPortFrom(server.IPv6, target)},
				})
			}); err != nil {
				t.Fatalf("IPVS services: %v", err)
			}
			for _, ip := range []netip.Addr{server.IPv4, server.IPv6} {
				e.serve(server, addr(ip, target), "echo")
			}
			s0, err := nodepath.ReadStats(e.net.Node.NetnsPath)
			if err != nil {
				t.Fatal(err)
			}
			for _, to := range []netip.AddrPort{addr(vip4, svcPort), addr(vip6, svcPort)} {
				l0 := e.local()
				res, err := e.client(client, 30*time.Second, "--connect", to.String(), "--mode", "echo",
					"--conns", "40", "--parallel", "4", "--min", "1", "--max", "1048576", "--seed", "50")
				if err != nil {
					netns.Do(e.net.Node.NetnsPath, func() error {
						out, _ := exec.Command("ipvsadm", "-Ln", "--stats").CombinedOutput()
						t.Logf("%s", out)
						return nil
					})
				}
				requireClean(t, res, err)
				l1 := e.local()
				nat := l1.AdmittedNAT - l0.AdmittedNAT
				t.Logf("IPVS %s: %d bytes echoed; admitted %d (%d through a translation)", to, res.Bytes, l1.Admitted-l0.Admitted, nat)
				if m != packetPath {
					continue
				}
				if nat < 40 {
					t.Errorf("IPVS %s: %d of 40 connections admitted through a translation", to, nat)
				}
				if carried := l1.RedirectBytes - l0.RedirectBytes; carried < uint64(res.Bytes) {
					t.Errorf("IPVS %s: the packet path carried %d bytes of %d echoed", to, carried, res.Bytes)
				}
			}
			s1, err := nodepath.ReadStats(e.net.Node.NetnsPath)
			if err != nil {
				t.Fatal(err)
			}
			if d := s1.Sub(s0); d.InvalidDropped != 0 {
				t.Errorf("kube-proxy dropped %d packets as INVALID", d.InvalidDropped)
			}
		})
	}
}

// haveIPVS loads ip_vs if it is a module and checks that it answers.
func haveIPVS() error {
	if _, err := exec.LookPath("ipvsadm"); err != nil {
		return fmt.Errorf("ipvsadm not installed: %w", err)
	}
	if _, err := os.Stat("/proc/net/ip_vs"); errors.Is(err, os.ErrNotExist) {
		if out, err := exec.Command("modprobe", "ip_vs").CombinedOutput(); err != nil {
			return fmt.Errorf("modprobe ip_vs: %v: %s", err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

type ipvsService struct {
	vip     netip.Addr
	port    uint16
	backend netip.AddrPort
}

// ipvsServices writes what kube-proxy's IPVS mode writes for these
// Services, in the calling goroutine's network namespace (a fresh one:
// nothing to remove but the namespace).
func ipvsServices(svcs []ipvsService) error {
	for _, kv := range [][2]string{
		{"/proc/sys/net/ipv4/vs/conntrack", "1"}, // kube-proxy: masquerade rules see IPVS's connections
		{"/proc/sys/net/ipv4/vs/expire_nodest_conn", "1"},
	} {
		if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil {
			return fmt.Errorf("sysctl %s: %w", kv[0], err)
		}
	}
	dummy := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "kube-ipvs0"}}
	if err := netlink.LinkAdd(dummy); err != nil {
		return fmt.Errorf("add kube-ipvs0: %w", err)
	}
	for _, s := range svcs {
		bits := 32
		if s.vip.Is6() {
			bits = 128
		}
		ipn := &net.IPNet{IP: net.IP(s.vip.AsSlice()), Mask: net.CIDRMask(bits, bits)}
		if err := netlink.AddrAdd(dummy, &netlink.Addr{IPNet: ipn}); err != nil {
			return fmt.Errorf("address %s on kube-ipvs0: %w", s.vip, err)
		}
		vs := netip.AddrPortFrom(s.vip, s.port).String()
		for _, args := range [][]string{
			{"-A", "-t", vs, "-s", "rr"},
			{"-a", "-t", vs, "-r", s.backend.String(), "-m"},
		} {
			if out, err := exec.Command("ipvsadm", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ipvsadm %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
			}
		}
	}
	return nil
}
