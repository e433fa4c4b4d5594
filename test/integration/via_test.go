package integration

import (
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
