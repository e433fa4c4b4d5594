package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Counters are the data path's counters, summed over CPUs.
type Counters struct {
	SocketsSeen     uint64 `json:"sockets_seen"`
	SocketsInserted uint64 `json:"sockets_inserted"`
	SocketsClosed   uint64 `json:"sockets_closed"`
	SkipNotLocal    uint64 `json:"skip_not_local"`
	SkipOptOut      uint64 `json:"skip_opt_out"`
	// SkipNotSocket counts sockets between registered pods that stay
	// off the socket path because an end has not opted in to it (they
	// take the packet path).
	SkipNotSocket     uint64 `json:"skip_not_socket"`
	SkipMPTCP         uint64 `json:"skip_mptcp"`
	SkipULP           uint64 `json:"skip_ulp"`
	InsertFailState   uint64 `json:"insert_fail_state"`
	InsertFailMap     uint64 `json:"insert_fail_map"`
	RedirectMsgs      uint64 `json:"redirect_msgs"`
	RedirectBytes     uint64 `json:"redirect_bytes"`
	BackpressureTrips uint64 `json:"backpressure_trips"`
	Promotions        uint64 `json:"promotions"`
	RecvProven        uint64 `json:"recv_proven"`
	// Fallback counts messages and bytes sent over TCP, by reason.
	Fallback map[string]Traffic `json:"fallback"`
}

// Traffic is a message and byte count.
type Traffic struct {
	Msgs  uint64 `json:"msgs"`
	Bytes uint64 `json:"bytes"`
}

// FallbackMsgs is the number of messages sent over TCP for any reason.
func (c Counters) FallbackMsgs() uint64 {
	var n uint64
	for _, t := range c.Fallback {
		n += t.Msgs
	}
	return n
}

// reasonName is the name of a fallback reason as shown to users.
func reasonName(r redirectFallbackReason) string {
	switch r {
	case redirectFallbackReasonFB_PEER_MISSING:
		return "peer_missing"
	case redirectFallbackReasonFB_ORDERING:
		return "ordering"
	case redirectFallbackReasonFB_NOT_PROVEN:
		return "not_proven"
	case redirectFallbackReasonFB_BACKPRESSURE:
		return "backpressure"
	case redirectFallbackReasonFB_PEER_GONE:
		return "peer_gone"
	default:
		return "untracked"
	}
}

// Counters reads the counters.
func (d *Datapath) Counters() (Counters, error) {
	raw := make([]uint64, redirectCounterCNT_MAX)
	var percpu []uint64
	for i := range raw {
		if err := d.counters.Lookup(uint32(i), &percpu); err != nil {
			return Counters{}, fmt.Errorf("read counter %d: %w", i, err)
		}
		for _, v := range percpu {
			raw[i] += v
		}
	}
	c := Counters{
		SocketsSeen:       raw[redirectCounterCNT_SOCK_SEEN],
		SocketsInserted:   raw[redirectCounterCNT_SOCK_INSERTED],
		SocketsClosed:     raw[redirectCounterCNT_SOCK_CLOSED],
		SkipNotLocal:      raw[redirectCounterCNT_SKIP_NOT_LOCAL],
		SkipOptOut:        raw[redirectCounterCNT_SKIP_OPT_OUT],
		SkipNotSocket:     raw[redirectCounterCNT_SKIP_NOT_SOCKET],
		SkipMPTCP:         raw[redirectCounterCNT_SKIP_MPTCP],
		SkipULP:           raw[redirectCounterCNT_SKIP_ULP],
		InsertFailState:   raw[redirectCounterCNT_INSERT_FAIL_STATE],
		InsertFailMap:     raw[redirectCounterCNT_INSERT_FAIL_MAP],
		RedirectMsgs:      raw[redirectCounterCNT_REDIRECT_MSGS],
		RedirectBytes:     raw[redirectCounterCNT_REDIRECT_BYTES],
		BackpressureTrips: raw[redirectCounterCNT_BACKPRESSURE_TRIPS],
		Promotions:        raw[redirectCounterCNT_PROMOTIONS],
		RecvProven:        raw[redirectCounterCNT_RECV_PROVEN],
		Fallback:          map[string]Traffic{},
	}
	for r := redirectFallbackReason(0); r < redirectFallbackReasonFB_MAX; r++ {
		c.Fallback[reasonName(r)] = Traffic{
			Msgs:  raw[uint32(redirectCounterCNT_FALLBACK_MSGS)+uint32(r)],
			Bytes: raw[uint32(redirectCounterCNT_FALLBACK_BYTES)+uint32(r)],
		}
	}
	return c, nil
}

// LiveSockets is the number of sockets in the socket map.
func (d *Datapath) LiveSockets() (int, error) {
	return countKeys(d.socks)
}

// SocketsByAddr counts the sockets in the socket map by local address:
// the connections of each endpoint that Patu short-circuits.
func (d *Datapath) SocketsByAddr() (map[netip.Addr]int, error) {
	var (
		k   redirectSockKey
		v   redirectSockRec
		out = map[netip.Addr]int{}
	)
	it := d.sockRecs.Iterate()
	for it.Next(&k, &v) {
		var b [16]byte
		for i, w := range k.LocalIp {
			binary.NativeEndian.PutUint32(b[4*i:], w)
		}
		out[netip.AddrFrom16(b).Unmap()]++
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("count sockets: %w", err)
	}
	return out, nil
}
