package integration

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
)

// TestBulkThroughBacklog: on the packet path a direction that carries a
// bulk packet moves from straight-in delivery to the peer's host veth
// (local.h says why), while its ACK-only reverse and a connection of
// small request/response messages stay straight in. The bulk direction's
// bytes arrive intact and are still the packet path's, not the bridge's.
func TestBulkThroughBacklog(t *testing.T) {
	e := setup(t, "itq", 16, 2, packetPath, bpf.Options{})
	a, b := e.net.Pods[0], e.net.Pods[1]
	for fam, ip := range families(b) {
		t.Run(fam, func(t *testing.T) {
			bulk, rr := addr(ip, 7040), addr(ip, 7041)
			e.serve(b, bulk, "sink")
			e.serve(b, rr, "echo")
			l0 := e.local()
			res, err := e.client(a, time.Minute, "--connect", bulk.String(), "--mode", "stream",
				"--bytes", "268435456", "--seed", "40")
			requireClean(t, res, err)
			l1 := e.local()
			if got := l1.RedirectBytes - l0.RedirectBytes; got < uint64(res.Bytes) {
				t.Errorf("the packet path carried %d bytes of %d", got, res.Bytes)
			}
			res, err = e.client(a, time.Minute, "--connect", rr.String(), "--mode", "echo",
				"--conns", "20", "--min", "1", "--max", "1024", "--seed", "41")
			requireClean(t, res, err)

			// Closed flows stay listed through their close grace.
			flows, err := e.dp.LocalFlows()
			if err != nil {
				t.Fatal(err)
			}
			var seen int
			for _, f := range flows {
				var want bool
				switch {
				case f.Dst == bulk:
					want = true // the stream's data
				case f.Src == bulk, f.Dst == rr, f.Src == rr:
				default:
					continue
				}
				seen++
				if f.Backlog != want {
					t.Errorf("%s → %s: through the backlog %v, want %v", f.Src, f.Dst, f.Backlog, want)
				}
			}
			if want := 2 + 2*20; seen != want {
				t.Errorf("%d directions of the test's connections listed, want %d: %+v", seen, want, flowsTo(flows, ip))
			}
		})
	}
}

func flowsTo(flows []bpf.LocalFlow, ip netip.Addr) []bpf.LocalFlow {
	var out []bpf.LocalFlow
	for _, f := range flows {
		if f.Src.Addr() == ip || f.Dst.Addr() == ip {
			out = append(out, f)
		}
	}
	return out
}

// TestReusedPort: a client that reuses its port for a new connection to the
// same server while the old connection's flow is still listed (closed by
// RST, inside its close grace) opens a new connection: its handshake goes
// through the node's netfilter and is admitted afresh, not carried past it
// as a packet of the old flow.
func TestReusedPort(t *testing.T) {
	e := setup(t, "itu", 17, 2, packetPath, bpf.Options{})
	a, b := e.net.Pods[0], e.net.Pods[1]
	for fam, ip := range families(b) {
		t.Run(fam, func(t *testing.T) {
			srv := addr(ip, 7050)
			e.serve(b, srv, "echo")
			local := &net.TCPAddr{IP: families(a)[fam].AsSlice(), Port: 40050}
			for i := range 3 {
				l0 := e.local()
				err := a.Do(func() error {
					d := net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}
					c, err := d.Dial("tcp", srv.String())
					if err != nil {
						return err
					}
					tc := c.(*net.TCPConn)
					defer tc.Close()
					tc.SetDeadline(time.Now().Add(5 * time.Second))
					msg := []byte(fmt.Sprintf("connection %d", i))
					if _, err := tc.Write(msg); err != nil {
						return err
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(tc, got); err != nil {
						return err
					}
					if string(got) != string(msg) {
						return fmt.Errorf("echo %q, want %q", got, msg)
					}
					// RST: no TIME_WAIT, the port is free at once.
					return tc.SetLinger(0)
				})
				if err != nil {
					t.Fatalf("connection %d from port %d: %v", i, local.Port, err)
				}
				l1 := e.local()
				if syns, adm := l1.SYNs-l0.SYNs, l1.Admitted-l0.Admitted; syns != 1 || adm != 1 {
					t.Errorf("connection %d from port %d: %d SYNs seen, %d admitted; want 1 and 1", i, local.Port, syns, adm)
				}
			}
		})
	}
}
