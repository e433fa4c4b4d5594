package e2e

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/rtlab"
	"github.com/patu-dev/patu/netns"
)

// uplink is an "external" client namespace linked to the lab's namespace,
// which stands for the node: lab side IP4/24 .1, client .2, and a route
// from the client to the pods through the node.
type uplink struct {
	name   string // the node end, in the lab's namespace
	ext    string // the client's namespace file
	nodeIP netip.Addr
}

func newUplink(t *testing.T, n *node, prefix string, net4, pods netip.Prefix) *uplink {
	t.Helper()
	extName := "patu-" + prefix + "-ext"
	netns.Delete(extName) // a crashed run's
	ext, err := netns.Create(extName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(extName) })
	u := &uplink{name: "xu" + prefix, ext: ext, nodeIP: net4.Addr().Next()}
	extIP := u.nodeIP.Next()
	f, err := os.Open(ext)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = netns.Do(n.lab.Netns(), func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: u.name}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(f.Fd())}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(u.name)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(u.nodeIP, net4.Bits()))}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		// The node routes between its uplink and the pods' bridge.
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	})
	if err != nil {
		t.Fatalf("uplink in the lab: %v", err)
	}
	err = netns.Do(ext, func() error {
		for _, name := range []string{"lo", "eth0"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			if name == "eth0" {
				if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(extIP, net4.Bits()))}); err != nil {
					return err
				}
				gw := net.IP(u.nodeIP.AsSlice())
				if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(pods.Masked()), Gw: gw}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("client namespace: %v", err)
	}
	// A frame on a wire carries its full checksum; a veth would pass a
	// partial one that an XDP redirect cannot complete.
	if err := netns.SetTxChecksum(ext, "eth0", false); err != nil {
		t.Fatal(err)
	}
	return u
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// patuIn runs the patu CLI in the lab's namespace, where the uplink and
// the pods' host veths are.
func (n *node) patuIn(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.lab.Netns(), bins.patu, "--bpffs", n.pinDir}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("patu %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// extClient runs patu-testpeer client in the client's namespace.
func (u *uplink) client(t *testing.T, args ...string) peerresult.Result {
	t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + u.ext, bins.peer, "client"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	res, perr := peerresult.Parse(out)
	if err != nil || perr != nil || res.Failed > 0 {
		t.Fatalf("client %s: %v, result %+v (%v)\n%s", strings.Join(args, " "), err, res, perr, stderr.String())
	}
	return res
}

// testXDP: a real pod, recorded by the CNI plugin under a real containerd
// (its host veth, and its hostPort from the runtime's portMappings), is
// reached from outside the node over the XDP path: to its address and to
// the node's hostPort, data intact, XDP counters moving; removing the pod
// leaves none of it in the maps.
func testXDP(t *testing.T, n *node, prefix string, pods netip.Prefix, net4 netip.Prefix) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, err := n.lab.RunPod(ctx, rtlab.PodSpec{Name: "x", Namespace: "e2e", PodCgroup: true,
		HostPorts: []rtlab.HostPort{{Protocol: "tcp", HostPort: 18080, ContainerPort: 8080}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.lab.StartContainer(ctx, p, rtlab.ContainerSpec{Name: "main", Command: serverCmd}); err != nil {
		t.Fatal(err)
	}
	x := &pod{Pod: p}
	rec := n.waitRegistered(x, 1)
	dp := n.dp()
	hps, err := dp.HostPorts()
	if err != nil {
		t.Fatal(err)
	}
	want := bpf.HostPort{Proto: 6, HostPort: 18080, PodIP: p.IP, PodPort: 8080}
	if !slices.Contains(hps, want) {
		t.Fatalf("hostPorts %+v lack %+v: the CNI plugin did not record the runtime's portMappings", hps, want)
	}
	if rec.HostIfindex == 0 || len(rec.PodMAC) == 0 {
		t.Fatalf("pod record without its veth: %+v", rec)
	}

	u := newUplink(t, n, prefix, net4, pods)
	if out := n.patuIn(t, "xdp", "attach", u.name); !strings.Contains(out, "attached") {
		t.Fatalf("xdp attach: %s", out)
	}
	detached := false
	defer func() {
		if !detached {
			n.patuIn(t, "xdp", "detach", u.name)
		}
	}()

	const size = 8 << 20
	for _, tc := range []struct {
		name   string
		dst    netip.AddrPort
		bucket func(bpf.XDPCounters) uint64
	}{
		{"pod address", netip.AddrPortFrom(p.IP, 8080), func(c bpf.XDPCounters) uint64 { return c.RedirectPod }},
		{"hostPort", netip.AddrPortFrom(u.nodeIP, 18080), func(c bpf.XDPCounters) uint64 { return c.RedirectHostPort }},
	} {
		c0, err := dp.XDPCounters()
		if err != nil {
			t.Fatal(err)
		}
		res := u.client(t, "--connect", tc.dst.String(), "--mode", "stream", "--bytes", strconv.Itoa(size))
		c1, _ := dp.XDPCounters()
		moved := tc.bucket(c1) - tc.bucket(c0)
		t.Logf("%s %s from outside: %d bytes, %d packets redirected by XDP, %d replies sent back by tc",
			tc.name, tc.dst, res.Bytes, moved, c1.ReplyRedirect-c0.ReplyRedirect)
		if res.Bytes != size {
			t.Errorf("%s: %d bytes arrived, want %d", tc.name, res.Bytes, size)
		}
		// 8 MiB is more than 5,000 full frames.
		if moved < 5000 || c1.ReplyRedirect == c0.ReplyRedirect {
			t.Errorf("%s: XDP redirected %d packets, tc %d replies", tc.name, moved, c1.ReplyRedirect-c0.ReplyRedirect)
		}
	}
	if s := n.patuIn(t, "status"); !strings.Contains(s, "on "+u.name) || !strings.Contains(s, "bypasses netfilter") {
		t.Errorf("status with XDP on:\n%s", s)
	}

	n.patuIn(t, "xdp", "detach", u.name)
	detached = true
	n.removePod(ctx, x)
	n.assertGone([]string{p.ID}, p.IPs, rec.Cgroups)
	routes, _ := dp.XDPRoutes()
	hps, _ = dp.HostPorts()
	for _, r := range routes {
		if slices.Contains(p.IPs, r.IP) {
			t.Errorf("route of the removed pod left: %+v", r)
		}
	}
	if len(hps) != 0 {
		t.Errorf("hostPorts left after the pod went: %+v", hps)
	}
	if fl, _ := dp.FlowCount(); fl != 0 {
		t.Errorf("%d flows left after detach", fl)
	}
}
