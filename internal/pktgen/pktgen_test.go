package pktgen

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/netns"
)

// pair makes two namespaces joined by a veth: a at 10.231.250.1, b at .2
// (and fd00:231:250::1, ::2).
func pair(t *testing.T) (a, b string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("PATU_SKIP_PRIVILEGED") != "" {
			t.Skip("not root")
		}
		t.Fatal("privileged test: run as root (or set PATU_SKIP_PRIVILEGED=1 to skip)")
	}
	names := []string{"xb1-pga", "xb1-pgb"}
	var paths []string
	for _, n := range names {
		netns.Delete(n)
		p, err := netns.Create(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netns.Delete(n) })
		paths = append(paths, p)
		// DAD off before the veth arrives, or the multicast routes ND
		// needs come a second late.
		if err := netns.Do(p, func() error {
			for _, k := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/accept_dad", []byte("0"), 0); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	fb, err := os.Open(paths[1])
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	err = netns.Do(paths[0], func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(fb.Fd())})
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		err := netns.Do(p, func() error {
			for _, name := range []string{"lo", "eth0"} {
				l, err := netlink.LinkByName(name)
				if err != nil {
					return err
				}
				if name == "eth0" {
					for _, a := range []string{"10.231.250.%d/24", "fd00:231:250::%d/64"} {
						addr, err := netlink.ParseAddr(fmt.Sprintf(a, i+1))
						if err != nil {
							return err
						}
						addr.Flags = unix.IFA_F_NODAD
						if err := netlink.AddrAdd(l, addr); err != nil {
							return err
						}
					}
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Wait for the link-local addresses: IPv6 multicast, and with it
	// neighbour discovery, starts working only then.
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range paths {
		for {
			tentative := false
			netns.Do(p, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				addrs, _ := netlink.AddrList(l, netlink.FAMILY_V6)
				ll := false
				for _, a := range addrs {
					ll = ll || a.IP.IsLinkLocalUnicast()
					tentative = tentative || a.Flags&unix.IFA_F_TENTATIVE != 0
				}
				tentative = tentative || !ll
				return nil
			})
			if !tentative {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("link-local address still tentative after 5s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return paths[0], paths[1]
}

func TestSendReceive(t *testing.T) {
	a, b := pair(t)
	for _, dst := range []string{"10.231.250.2:9000", "[fd00:231:250::2]:9001"} {
		ap := netip.MustParseAddrPort(dst)
		var r *Receiver
		if err := netns.Do(b, func() (err error) { r, err = NewReceiver(ap, 64); return }); err != nil {
			t.Fatal(err)
		}
		var s *Sender
		if err := netns.Do(a, func() (err error) { s, err = NewSender(SenderConfig{Dst: ap, Rate: 50000}); return }); err != nil {
			t.Fatal(err)
		}
		r.Expect(s.RunID())
		res, err := s.Run(context.Background(), 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		st := r.Stats()
		s.Close()
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: sent %d (%.0f pps), %+v", dst, res.Sent, res.PPS(), st)
		if res.PPS() < 30000 || res.PPS() > 60000 {
			t.Errorf("paced at 50k pps, sent %.0f pps", res.PPS())
		}
		if st.Valid == 0 || st.Bad != 0 || st.Stale != 0 || st.Valid+st.Lost < res.Sent*9/10 {
			t.Errorf("sent %d, received %+v", res.Sent, st)
		}
	}
	// Unpaced, just to see it run.
	ap := netip.MustParseAddrPort("10.231.250.2:9002")
	var r *Receiver
	if err := netns.Do(b, func() (err error) { r, err = NewReceiver(ap, 64); return }); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var s *Sender
	if err := netns.Do(a, func() (err error) { s, err = NewSender(SenderConfig{Dst: ap}); return }); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r.Expect(s.RunID())
	res, _ := s.Run(context.Background(), time.Second)
	time.Sleep(50 * time.Millisecond)
	t.Logf("unpaced: sent %.0f pps, received %+v", res.PPS(), r.Stats())
}

func TestRR(t *testing.T) {
	a, b := pair(t)
	for _, dst := range []string{"10.231.250.2:9010", "[fd00:231:250::2]:9011"} {
		ap := netip.MustParseAddrPort(dst)
		var srv *RRServer
		if err := netns.Do(b, func() (err error) { srv, err = NewRRServer(ap, 64); return }); err != nil {
			t.Fatal(err)
		}
		var c *RRClient
		if err := netns.Do(a, func() (err error) { c, err = DialRR(ap, 64); return }); err != nil {
			srv.Close()
			t.Fatal(err)
		}
		started := false
		res, err := c.Run(context.Background(), 100*time.Millisecond, 400*time.Millisecond, func() { started = true })
		c.Close()
		if serr := srv.Close(); serr != nil {
			t.Errorf("%s: server: %v", dst, serr)
		}
		if err != nil {
			t.Fatalf("%s: %v", dst, err)
		}
		t.Logf("%s: %d round trips in %.2fs, p50 %.1fµs p99 %.1fµs max %.1fµs", dst, res.Count, res.Seconds, res.P50, res.P99, res.Max)
		if !started || res.Count < 100 || res.Seconds < 0.3 || res.Seconds > 1 {
			t.Errorf("%s: started %v, %+v", dst, started, res)
		}
		if !(res.Min > 0 && res.Min <= res.P50 && res.P50 <= res.P90 && res.P90 <= res.P99 && res.P99 <= res.P999 && res.P999 <= res.Max) {
			t.Errorf("%s: percentiles out of order: %+v", dst, res)
		}
	}
	// A server closed under a connected client ends the client's run with an error.
	ap := netip.MustParseAddrPort("10.231.250.2:9012")
	var srv *RRServer
	if err := netns.Do(b, func() (err error) { srv, err = NewRRServer(ap, 64); return }); err != nil {
		t.Fatal(err)
	}
	var c *RRClient
	if err := netns.Do(a, func() (err error) { c, err = DialRR(ap, 64); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() { time.Sleep(100 * time.Millisecond); srv.Close() }()
	if _, err := c.Run(context.Background(), 0, 5*time.Second, nil); err == nil {
		t.Error("run against a closed server: no error")
	}
}

func TestSummarizeRTT(t *testing.T) {
	var v []int64
	for i := 1000; i >= 1; i-- {
		v = append(v, int64(i)*1000)
	}
	var r RRResult
	summarizeRTT(&r, v)
	if r.Count != 1000 || r.P50 != 500 || r.P90 != 900 || r.P99 != 990 || r.P999 != 999 || r.Min != 1 || r.Max != 1000 || r.Mean != 500.5 {
		t.Errorf("%+v", r)
	}
}
