package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/patu-dev/patu/bpf"
)

// counterDelta is what Patu's counters moved between two readings.
type counterDelta struct {
	Admitted        uint64 // connections that took the packet path
	LocalPackets    uint64
	LocalBytes      uint64
	BacklogPackets  uint64 // of LocalPackets, handed to the peer's host veth
	SocketsInserted uint64
	RedirectMsgs    uint64
	RedirectBytes   uint64
	Fallback        map[string]bpf.Traffic
}

// snapshot is one reading of both fast paths' counters.
type snapshot struct {
	sock  bpf.Counters
	local bpf.LocalCounters
}

func readSnapshot(dp *bpf.Datapath) (snapshot, error) {
	var s snapshot
	var err error
	if s.sock, err = dp.Counters(); err != nil {
		return s, err
	}
	s.local, err = dp.LocalCounters()
	return s, err
}

func diffCounters(sa, sb snapshot) *counterDelta {
	a, b := sa.sock, sb.sock
	d := &counterDelta{
		Admitted:        sb.local.Admitted - sa.local.Admitted,
		LocalPackets:    sb.local.RedirectPackets - sa.local.RedirectPackets,
		LocalBytes:      sb.local.RedirectBytes - sa.local.RedirectBytes,
		BacklogPackets:  sb.local.BacklogPackets - sa.local.BacklogPackets,
		SocketsInserted: b.SocketsInserted - a.SocketsInserted,
		RedirectMsgs:    b.RedirectMsgs - a.RedirectMsgs,
		RedirectBytes:   b.RedirectBytes - a.RedirectBytes,
		Fallback:        map[string]bpf.Traffic{},
	}
	for r, t := range b.Fallback {
		d.Fallback[r] = bpf.Traffic{Msgs: t.Msgs - a.Fallback[r].Msgs, Bytes: t.Bytes - a.Fallback[r].Bytes}
	}
	return d
}

// carried is what the fast paths carried: pod to pod or socket to socket.
func (d *counterDelta) carried() uint64 { return d.LocalBytes + d.RedirectBytes }

// tcpBytes is what went over TCP although Patu tracked the sockets.
func (d *counterDelta) tcpBytes() uint64 {
	var n uint64
	for _, t := range d.Fallback {
		n += t.Bytes
	}
	return n
}

// fallbackReasons are Patu's reasons to send a message over TCP, in the
// order shown, with what each means for a newcomer.
var fallbackReasons = []struct{ name, why string }{
	{"not_proven", "the receiver had not been seen reading with recvmsg yet, as at a connection's first message"},
	{"ordering", "bytes sent earlier over TCP were not all read yet; redirecting would overtake them"},
	{"backpressure", "the receiver had more queued than its mark; TCP flow control then paces the writer"},
	{"peer_missing", "the peer socket was not (yet) in Patu's map"},
	{"peer_gone", "the peer socket had closed"},
	{"untracked", "the socket had no Patu state"},
}

// String shows the delta as lines for the demo's output.
func (d *counterDelta) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-28s %d\n", "connections admitted", d.Admitted)
	fmt.Fprintf(&b, "%-28s %s packets, %.1f MiB (headers included)\n", "pod to pod, past the bridge", count(d.LocalPackets), mib(d.LocalBytes))
	if d.BacklogPackets > 0 {
		fmt.Fprintf(&b, "%-28s %s packets (bulk: queued as the bridge path queues them)\n", "… of them by the peer's veth", count(d.BacklogPackets))
	}
	if d.SocketsInserted == 0 && d.RedirectMsgs == 0 {
		return b.String()
	}
	fmt.Fprintf(&b, "%-28s %d\n", "sockets added to its map", d.SocketsInserted)
	fmt.Fprintf(&b, "%-28s %s msgs, %.1f MiB\n", "redirected socket to socket", count(d.RedirectMsgs), mib(d.RedirectBytes))
	for _, r := range fallbackReasons {
		if t := d.Fallback[r.name]; t.Msgs > 0 {
			fmt.Fprintf(&b, "%-28s %s msgs, %.1f MiB: %s\n", "over TCP, "+strings.ReplaceAll(r.name, "_", " "),
				count(t.Msgs), mib(t.Bytes), r.why)
		}
	}
	return b.String()
}

// writeTable prints the bridge and Patu runs side by side, one block per
// message size, with Patu's change against the bridge.
func writeTable(w io.Writer, bridge, patu []rrRun) {
	row := func(size, path, p50, p99, tx, pkts string) {
		line := fmt.Sprintf("   %-6s %-7s %9s %9s %15s %15s", size, path, p50, p99, tx, pkts)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	row("", "", "p50 µs", "p99 µs", "round trips/s", "bridge packets")
	for i := range bridge {
		if i >= len(patu) {
			break
		}
		b, p := bridge[i], patu[i]
		row(sizeName(b.size), "bridge", fmt.Sprintf("%.1f", b.res.P50()), fmt.Sprintf("%.1f", b.res.P99()),
			count(uint64(b.res.TxPerSec())), count(b.vethPkts))
		row("", "Patu", fmt.Sprintf("%.1f", p.res.P50()), fmt.Sprintf("%.1f", p.res.P99()),
			count(uint64(p.res.TxPerSec())), count(p.vethPkts))
		row("", "change", change(b.res.P50(), p.res.P50()), change(b.res.P99(), p.res.P99()),
			change(b.res.TxPerSec(), p.res.TxPerSec()), "")
	}
}

// change is the relative change from a to b, as "-42%".
func change(a, b float64) string {
	if a == 0 {
		return "-"
	}
	return fmt.Sprintf("%+.0f%%", (b-a)/a*100)
}

// sizeName names a message size: "64 B", "1 KiB".
func sizeName(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

// sizeList names rrSizes: "64 B and 1 KiB".
func sizeList() string {
	names := make([]string, len(rrSizes))
	for i, s := range rrSizes {
		names[i] = sizeName(s)
	}
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// count prints n with thousands separators: 1,234,567.
func count(n uint64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
