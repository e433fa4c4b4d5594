// Package pktgen measures packet rates: a UDP sender that blasts (or paces)
// small datagrams over several flows with sendmmsg(2), and a receiver that
// takes them with recvmmsg(2), checks every payload and counts losses and
// reordering per flow; and a TCP request/response ping-pong (rr.go) that
// times every round trip of one connection.
//
// All create their sockets in the network namespace of the calling thread
// (call New* and DialRR inside netns.Do or testnet.Pod.Do); the sockets stay
// there, and Run and the receive and echo loops may then run on any thread.
package pktgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// header is the start of every payload: magic, run ID, flow, sequence.
const (
	magic      = 0x50415455 // "PATU"
	headerSize = 20
	// MaxFlows bounds the flows of one run (the receiver keeps a slot per flow).
	MaxFlows = 1024
)

// SenderConfig describes what a Sender sends.
type SenderConfig struct {
	Dst netip.AddrPort
	// Flows is the number of sockets (source ports), used round robin.
	// Default 8.
	Flows int
	// Payload is the UDP payload size in bytes, at least 20. Default 64.
	Payload int
	// Rate is the target in packets per second; 0 sends as fast as the
	// path takes them.
	Rate float64
	// Batch is the number of datagrams per sendmmsg. Default 32.
	Batch int
}

// Sender sends numbered datagrams.
type Sender struct {
	cfg SenderConfig
	fds []int
	run uint32
}

// NewSender opens cfg.Flows UDP sockets connected to cfg.Dst, in the
// calling thread's network namespace.
func NewSender(cfg SenderConfig) (*Sender, error) {
	if cfg.Flows == 0 {
		cfg.Flows = 8
	}
	if cfg.Payload == 0 {
		cfg.Payload = 64
	}
	if cfg.Batch == 0 {
		cfg.Batch = 32
	}
	if cfg.Flows < 1 || cfg.Flows > MaxFlows || cfg.Payload < headerSize || cfg.Payload > 65000 || cfg.Batch < 1 || cfg.Batch > 1024 || cfg.Rate < 0 {
		return nil, fmt.Errorf("pktgen sender: invalid config %+v", cfg)
	}
	if !cfg.Dst.IsValid() {
		return nil, errors.New("pktgen sender: no destination")
	}
	s := &Sender{cfg: cfg, run: rand.Uint32()}
	for range cfg.Flows {
		fd, err := udpSocket(cfg.Dst.Addr())
		if err != nil {
			s.Close()
			return nil, err
		}
		s.fds = append(s.fds, fd)
		if err := unix.Connect(fd, sockaddr(cfg.Dst)); err != nil {
			s.Close()
			return nil, fmt.Errorf("pktgen sender: connect to %s: %w", cfg.Dst, err)
		}
	}
	return s, nil
}

// RunID identifies this sender's datagrams; give it to Receiver.Expect.
func (s *Sender) RunID() uint32 { return s.run }

// Close closes the sockets.
func (s *Sender) Close() error {
	for _, fd := range s.fds {
		unix.Close(fd)
	}
	s.fds = nil
	return nil
}

// SendResult is what Run sent.
type SendResult struct {
	Sent    uint64  `json:"sent"`
	Errors  uint64  `json:"send_errors"` // sendmmsg failures (ENOBUFS, ECONNREFUSED...), not counted as sent
	Seconds float64 `json:"seconds"`
}

// PPS is the rate actually sent.
func (r SendResult) PPS() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Sent) / r.Seconds
}

// Run sends for d (or until ctx ends) on a locked OS thread and returns
// what it sent.
func (s *Sender) Run(ctx context.Context, d time.Duration) (SendResult, error) {
	cfg := s.cfg
	bufs := make([][]byte, cfg.Batch)
	iovs := make([]unix.Iovec, cfg.Batch)
	msgs := make([]unix.Mmsghdr, cfg.Batch)
	for i := range bufs {
		bufs[i] = make([]byte, cfg.Payload)
		binary.BigEndian.PutUint32(bufs[i][0:], magic)
		binary.BigEndian.PutUint32(bufs[i][4:], s.run)
		for j := headerSize; j < cfg.Payload; j++ {
			bufs[i][j] = byte(j)
		}
		iovs[i].Base = &bufs[i][0]
		iovs[i].SetLen(cfg.Payload)
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	seqs := make([]uint64, len(s.fds))
	var res SendResult
	start := time.Now()
	end := start.Add(d)
	for n := 0; ; n++ {
		if n%64 == 0 {
			now := time.Now()
			if ctx.Err() != nil || !now.Before(end) {
				break
			}
			if cfg.Rate > 0 {
				// Pace by the schedule, not per batch: sleeps overshoot,
				// and the next batches catch up.
				due := start.Add(time.Duration(float64(res.Sent) / cfg.Rate * float64(time.Second)))
				if wait := due.Sub(now); wait > 0 {
					time.Sleep(min(wait, end.Sub(now)))
				}
			}
		} else if cfg.Rate > 0 && n%4 == 0 {
			due := start.Add(time.Duration(float64(res.Sent) / cfg.Rate * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
		}
		f := n % len(s.fds)
		for i := range msgs {
			binary.BigEndian.PutUint16(bufs[i][8:], uint16(f))
			binary.BigEndian.PutUint64(bufs[i][12:], seqs[f]+uint64(i))
		}
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fds[f]), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
		if errno != 0 {
			if errno == unix.EINTR {
				continue
			}
			res.Errors++
			// The sequence moves on as if sent: the receiver counts the
			// gap as lost, which it is.
			seqs[f] += uint64(len(msgs))
			continue
		}
		seqs[f] += uint64(r)
		res.Sent += uint64(r)
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// Receiver counts and checks the datagrams of a Sender.
type Receiver struct {
	fd      int
	payload int
	run     atomic.Uint32

	valid, bad, stale, lost, reordered atomic.Uint64
	mu                                 sync.Mutex // guards next
	next                               []uint64

	stopping atomic.Bool
	done     chan struct{}
	err      error
}

// RecvStats are a Receiver's counters.
type RecvStats struct {
	Valid     uint64 `json:"valid"`
	Bad       uint64 `json:"bad"`       // wrong size or content
	Stale     uint64 `json:"stale"`     // another run's (an earlier round still draining)
	Lost      uint64 `json:"lost"`      // sequence gaps
	Reordered uint64 `json:"reordered"` // older than one already seen
}

// Sub returns s - o.
func (s RecvStats) Sub(o RecvStats) RecvStats {
	return RecvStats{s.Valid - o.Valid, s.Bad - o.Bad, s.Stale - o.Stale, s.Lost - o.Lost, s.Reordered - o.Reordered}
}

// NewReceiver binds a UDP socket to addr in the calling thread's network
// namespace and starts receiving in the background. payload is the
// expected payload size.
func NewReceiver(addr netip.AddrPort, payload int) (*Receiver, error) {
	if payload < headerSize {
		return nil, fmt.Errorf("pktgen receiver: payload %d below %d", payload, headerSize)
	}
	fd, err := udpSocket(addr.Addr())
	if err != nil {
		return nil, err
	}
	// A big buffer: a short stall of the reader must not be what limits
	// the rate of the path under test.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen receiver: SO_RCVTIMEO: %w", err)
	}
	if err := unix.Bind(fd, sockaddr(addr)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen receiver: bind %s: %w", addr, err)
	}
	r := &Receiver{fd: fd, payload: payload, next: make([]uint64, MaxFlows), done: make(chan struct{})}
	go r.loop()
	return r, nil
}

// Expect makes the receiver count datagrams of the run with this ID (a
// Sender's RunID) as valid, and resets the per-flow sequences.
func (r *Receiver) Expect(run uint32) {
	r.mu.Lock()
	clear(r.next)
	r.run.Store(run)
	r.mu.Unlock()
}

// Stats returns the counters so far.
func (r *Receiver) Stats() RecvStats {
	return RecvStats{r.valid.Load(), r.bad.Load(), r.stale.Load(), r.lost.Load(), r.reordered.Load()}
}

// Close stops the receiver and closes its socket.
func (r *Receiver) Close() error {
	// shutdown wakes the blocked recvmmsg; the timeout is the fallback.
	r.stopping.Store(true)
	unix.Shutdown(r.fd, unix.SHUT_RDWR)
	<-r.done
	unix.Close(r.fd)
	return r.err
}

func (r *Receiver) loop() {
	defer close(r.done)
	const batch = 64
	size := r.payload + 1 // one more: a longer datagram shows as such
	buf := make([]byte, batch*size)
	iovs := make([]unix.Iovec, batch)
	msgs := make([]unix.Mmsghdr, batch)
	for i := range msgs {
		iovs[i].Base = &buf[i*size]
		iovs[i].SetLen(size)
		msgs[i].Hdr.Iov = &iovs[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	pattern := make([]byte, r.payload)
	for j := range pattern {
		pattern[j] = byte(j)
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(r.fd), uintptr(unsafe.Pointer(&msgs[0])), batch, unix.MSG_WAITFORONE, 0, 0)
		if r.stopping.Load() {
			return
		}
		switch errno {
		case 0:
		case unix.EAGAIN, unix.EINTR:
			continue
		default:
			r.err = fmt.Errorf("pktgen receiver: recvmmsg: %w", errno)
			return
		}
		if n == 0 {
			continue
		}
		run := r.run.Load()
		r.mu.Lock()
		var valid, bad, stale, lost, reord uint64
		for i := range int(n) {
			p := buf[i*size : i*size+int(msgs[i].Len)]
			if len(p) != r.payload || binary.BigEndian.Uint32(p) != magic || string(p[headerSize:]) != string(pattern[headerSize:]) {
				bad++
				continue
			}
			if binary.BigEndian.Uint32(p[4:]) != run {
				stale++
				continue
			}
			flow := binary.BigEndian.Uint16(p[8:])
			seq := binary.BigEndian.Uint64(p[12:])
			if int(flow) >= MaxFlows {
				bad++
				continue
			}
			valid++
			switch next := r.next[flow]; {
			case seq == next:
				r.next[flow] = seq + 1
			case seq > next:
				lost += seq - next
				r.next[flow] = seq + 1
			default:
				reord++
			}
		}
		r.mu.Unlock()
		r.valid.Add(valid)
		r.bad.Add(bad)
		r.stale.Add(stale)
		r.lost.Add(lost)
		r.reordered.Add(reord)
	}
}

func udpSocket(a netip.Addr) (int, error) {
	domain := unix.AF_INET
	if a.Is6() && !a.Is4In6() {
		domain = unix.AF_INET6
	}
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("pktgen: udp socket: %w", err)
	}
	return fd, nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if a := ap.Addr(); a.Is4() || a.Is4In6() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}
