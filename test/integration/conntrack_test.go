package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
)

// TestConntrack runs the connections of an application (short echo
// connections, a long stream, resets) on a node path as K3s has it:
// bridge netfilter, conntrack, kube-proxy's rules with their drop of
// INVALID packets. The packet path bypasses netfilter after the
// handshake, so it must keep conntrack right by itself: no packet dropped
// as INVALID (a FIN or RST out of conntrack's window would be), and no
// entry of the test's flows left ESTABLISHED once they closed: the packet
// path ends the entry at close, while its own flow keeps a grace (long
// here, so that the check cannot pass by waiting for it).
func TestConntrack(t *testing.T) {
	const grace = 8 * time.Second
	for _, m := range []mode{bridgePath, packetPath} {
		t.Run(string(m), func(t *testing.T) {
			e := setup(t, "itk", 10, 2, m, bpf.Options{CloseGrace: grace})
			a, b := e.net.Pods[0], e.net.Pods[1]
			undo, err := nodepath.Apply(e.net.Node.NetnsPath, nodepath.Config{Bridge: e.net.Bridge,
				PodSubnet4: netip.MustParsePrefix("10.201.10.0/24"), PodSubnet6: netip.MustParsePrefix("fd00:201:10::/64"),
				ServiceCIDR4: netip.MustParsePrefix("10.201.64.0/20"), ServiceCIDR6: netip.MustParsePrefix("fd00:201:ff10::/112"),
				RemotePods4: netip.MustParsePrefix("10.201.80.0/20"), RemotePods6: netip.MustParsePrefix("fd00:201:ff11::/112"),
				Services: 20})
			if err != nil {
				t.Fatalf("node path: %v", err)
			}
			t.Cleanup(func() { undo() })
			for fam, ip := range families(b) {
				e.serve(b, addr(ip, 7020), "echo")
				e.serve(b, addr(ip, 7021), "sink")
				e.serve(b, addr(ip, 7022), "close-early", "--rst")
				_ = fam
			}
			s0, err := nodepath.ReadStats(e.net.Node.NetnsPath)
			if err != nil {
				t.Fatal(err)
			}
			l0 := e.local()
			for _, ip := range []netip.Addr{b.IPv4, b.IPv6} {
				res, err := e.client(a, 2*time.Minute, "--connect", addr(ip, 7020).String(), "--mode", "echo",
					"--conns", "300", "--parallel", "8", "--min", "1", "--max", "262144", "--seed", "20")
				requireClean(t, res, err)
				res, err = e.client(a, 2*time.Minute, "--connect", addr(ip, 7021).String(), "--mode", "stream",
					"--bytes", "67108864", "--seed", "21")
				requireClean(t, res, err)
				if _, err := e.client(a, 30*time.Second, "--connect", addr(ip, 7022).String(), "--mode", "rst",
					"--conns", "20", "--parallel", "4", "--seed", "22"); err != nil {
					t.Fatal(err)
				}
			}
			closed := time.Now()
			s1, err := nodepath.ReadStats(e.net.Node.NetnsPath)
			if err != nil {
				t.Fatal(err)
			}
			d, l1 := s1.Sub(s0), e.local()
			t.Logf("%s: forwarded %d packets (%d as established), dropped %d as INVALID; packet path: admitted %d, closed %d FIN %d RST, conntrack kept alive %d, ended at close %d, missing %d",
				m, d.ForwardPackets, d.EstablishedPackets, d.InvalidDropped, l1.Admitted-l0.Admitted, l1.ClosedFIN-l0.ClosedFIN,
				l1.ClosedRST-l0.ClosedRST, l1.ConntrackRefresh-l0.ConntrackRefresh, l1.ConntrackClose-l0.ConntrackClose,
				l1.ConntrackMissing-l0.ConntrackMissing)
			if d.InvalidDropped != 0 {
				t.Errorf("kube-proxy dropped %d packets as INVALID", d.InvalidDropped)
			}
			if m == packetPath {
				if l1.Admitted-l0.Admitted < 600 {
					t.Errorf("only %d connections admitted to the packet path", l1.Admitted-l0.Admitted)
				}
				if l1.ConntrackClose == l0.ConntrackClose {
					t.Errorf("no conntrack entry was ended at close")
				}
			}
			// Nothing of the test's flows is left ESTABLISHED moments
			// after the last close, well inside the packet path's grace
			// (TIME_WAIT and CLOSE entries, as the bridge path leaves
			// them, time out on their own).
			const settle = 2 * time.Second
			deadline := time.Now().Add(settle)
			for {
				est := established(t, e.net.Node.NetnsPath, a, b)
				if len(est) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d conntrack entries still ESTABLISHED %s after the last connection closed:\n%s",
						len(est), settle, strings.Join(est, "\n"))
				}
				time.Sleep(250 * time.Millisecond)
			}
			if m == packetPath {
				time.Sleep(time.Until(closed.Add(grace + time.Second)))
				if n, err := e.dp.SweepLocalFlows(); err != nil {
					t.Fatal(err)
				} else if flows, _ := e.dp.LocalFlows(); len(flows) != 0 {
					t.Errorf("%d local flows left after the sweep (removed %d): %+v", len(flows), n, flows)
				}
			}
		})
	}
}

// established lists the conntrack entries of TCP between pods a and b
// that are in state ESTABLISHED, in the namespace at nsPath.
func established(t *testing.T, nsPath string, a, b *testnet.Pod) []string {
	t.Helper()
	var out []string
	err := netns.Do(nsPath, func() error {
		for _, fam := range []string{"ipv4", "ipv6"} {
			cmd := exec.CommandContext(context.Background(), "conntrack", "-L", "-p", "tcp", "-f", fam)
			var so, se bytes.Buffer
			cmd.Stdout, cmd.Stderr = &so, &se
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("conntrack -L: %v: %s", err, se.String())
			}
			for _, line := range strings.Split(so.String(), "\n") {
				if !strings.Contains(line, "ESTABLISHED") {
					continue
				}
				for _, ip := range []netip.Addr{a.IPv4, a.IPv6} {
					if strings.Contains(line, "src="+ip.String()+" ") {
						out = append(out, line)
						break
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = b
	return out
}
