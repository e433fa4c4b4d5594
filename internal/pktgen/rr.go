package pktgen

// A TCP request/response ping-pong: one connection, one message of a fixed
// size outstanding at a time, every round trip timed. It is what sockperf's
// ping-pong measures, for IPv4 and IPv6 alike (Debian's sockperf 3.7 has no
// IPv6).

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// RRServer echoes every message of its connections back.
type RRServer struct {
	fd   int
	size int

	mu    sync.Mutex
	conns map[int]bool
	wg    sync.WaitGroup
	err   error
}

// NewRRServer listens on addr, in the calling thread's network namespace,
// for connections sending messages of size bytes, and echoes each message
// back whole. Accepted connections stay in that namespace.
func NewRRServer(addr netip.AddrPort, size int) (*RRServer, error) {
	if size < 1 || size > 1<<20 {
		return nil, fmt.Errorf("pktgen rr server: message size %d out of range", size)
	}
	fd, err := tcpSocket(addr.Addr())
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen rr server: SO_REUSEADDR: %w", err)
	}
	if err := unix.Bind(fd, sockaddr(addr)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen rr server: bind %s: %w", addr, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen rr server: listen on %s: %w", addr, err)
	}
	s := &RRServer{fd: fd, size: size, conns: map[int]bool{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *RRServer) accept() {
	defer s.wg.Done()
	for {
		nfd, _, err := unix.Accept4(s.fd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if err != nil {
			// Close shuts the listener down: accept fails with EINVAL.
			return
		}
		s.mu.Lock()
		if s.conns == nil { // closing
			s.mu.Unlock()
			unix.Close(nfd)
			return
		}
		s.conns[nfd] = true
		s.mu.Unlock()
		unix.SetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		s.wg.Add(1)
		go s.echo(nfd)
	}
}

// echo answers one connection until its peer closes it or Close shuts it
// down. It keeps its OS thread: the reply leaves as soon as the request is
// read, as a server process's would.
func (s *RRServer) echo(fd int) {
	defer s.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, s.size)
	var err error
	for {
		if err = readFull(fd, buf); err != nil {
			break
		}
		if err = writeFull(fd, buf); err != nil {
			break
		}
	}
	s.mu.Lock()
	if s.conns != nil {
		delete(s.conns, fd)
		if !errors.Is(err, errEOF) && !errors.Is(err, unix.ECONNRESET) && s.err == nil {
			s.err = fmt.Errorf("pktgen rr server: %w", err)
		}
	}
	s.mu.Unlock()
	unix.Close(fd)
}

// Close stops the server and its connections, and returns the first error
// a connection met (a client closing its end is none).
func (s *RRServer) Close() error {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	for fd := range conns {
		// The echo loop closes it once its read or write fails.
		unix.Shutdown(fd, unix.SHUT_RDWR)
	}
	s.mu.Unlock()
	unix.Shutdown(s.fd, unix.SHUT_RDWR)
	s.wg.Wait()
	unix.Close(s.fd)
	return s.err
}

// RRClient is one connection to an RRServer.
type RRClient struct {
	fd   int
	size int
}

// DialRR connects to an RRServer at dst from the calling thread's network
// namespace, for messages of size bytes, with Nagle off.
func DialRR(dst netip.AddrPort, size int) (*RRClient, error) {
	if size < 1 || size > 1<<20 {
		return nil, fmt.Errorf("pktgen rr client: message size %d out of range", size)
	}
	fd, err := tcpSocket(dst.Addr())
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen rr client: TCP_NODELAY: %w", err)
	}
	// A server that never answers must not hang a run for good.
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("pktgen rr client: socket timeout: %w", err)
		}
	}
	for {
		err = unix.Connect(fd, sockaddr(dst))
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pktgen rr client: connect to %s: %w", dst, err)
	}
	return &RRClient{fd: fd, size: size}, nil
}

// Close closes the connection.
func (c *RRClient) Close() error {
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

// RRResult is what a ping-pong measured: round trips after the warm-up.
type RRResult struct {
	Count   int     `json:"count"`   // round trips timed
	Seconds float64 `json:"seconds"` // the timed part of the run
	Size    int     `json:"size"`    // message size, each way
	// Round-trip latency in µs: percentiles, mean, extremes.
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p99_9_us"`
	Mean float64 `json:"mean_us"`
	Min  float64 `json:"min_us"`
	Max  float64 `json:"max_us"`
}

// RoundTripsPerSec is the rate of timed round trips.
func (r RRResult) RoundTripsPerSec() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Count) / r.Seconds
}

// Run sends a message, waits for the whole echo and times the round trip,
// again and again: for warmup untimed (connections warm, neighbours and
// conntrack entries made), then for d (or until ctx ends), on a locked OS
// thread. onStart, if set, is called when the timed part starts.
func (c *RRClient) Run(ctx context.Context, warmup, d time.Duration, onStart func()) (RRResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	req := make([]byte, c.size)
	for i := range req {
		req[i] = byte(i * 7)
	}
	resp := make([]byte, c.size)
	rtts := make([]int64, 0, 1<<16)
	res := RRResult{Size: c.size}
	start := time.Now()
	timedFrom := start.Add(warmup)
	end := timedFrom.Add(d)
	timing := false
	for n := 0; ; n++ {
		t0 := time.Now()
		if !timing && !t0.Before(timedFrom) {
			timing = true
			timedFrom = t0
			if onStart != nil {
				onStart()
				t0 = time.Now()
			}
		}
		if !t0.Before(end) || (n%256 == 0 && ctx.Err() != nil) {
			break
		}
		req[0] = byte(n)
		if err := writeFull(c.fd, req); err != nil {
			return res, fmt.Errorf("pktgen rr client: send: %w", err)
		}
		if err := readFull(c.fd, resp); err != nil {
			return res, fmt.Errorf("pktgen rr client: receive: %w", err)
		}
		rtt := time.Since(t0)
		if resp[0] != req[0] || resp[c.size-1] != req[c.size-1] {
			return res, errors.New("pktgen rr client: the echo differs from the request")
		}
		if timing {
			rtts = append(rtts, int64(rtt))
		}
	}
	res.Seconds = time.Since(timedFrom).Seconds()
	if !timing {
		res.Seconds = 0
	}
	summarizeRTT(&res, rtts)
	if res.Count == 0 {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		return res, errors.New("pktgen rr client: no round trip timed")
	}
	return res, nil
}

// summarizeRTT fills res from the round trips in ns (which it sorts).
func summarizeRTT(res *RRResult, rtts []int64) {
	res.Count = len(rtts)
	if len(rtts) == 0 {
		return
	}
	slices.Sort(rtts)
	var sum float64
	for _, v := range rtts {
		sum += float64(v)
	}
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	// Nearest rank: the smallest value with at least p of the samples at
	// or below it.
	pct := func(p float64) float64 {
		i := int(p*float64(len(rtts))+0.999999999) - 1
		return us(rtts[max(0, min(i, len(rtts)-1))])
	}
	res.P50, res.P90, res.P99, res.P999 = pct(0.5), pct(0.9), pct(0.99), pct(0.999)
	res.Mean = sum / float64(len(rtts)) / 1e3
	res.Min, res.Max = us(rtts[0]), us(rtts[len(rtts)-1])
}

// errEOF is a peer's orderly close in the middle of nothing.
var errEOF = errors.New("connection closed by peer")

func readFull(fd int, b []byte) error {
	for off := 0; off < len(b); {
		n, err := unix.Read(fd, b[off:])
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			if off == 0 {
				return errEOF
			}
			return fmt.Errorf("%w after %d of %d bytes", errEOF, off, len(b))
		}
		off += n
	}
	return nil
}

func writeFull(fd int, b []byte) error {
	for off := 0; off < len(b); {
		n, err := unix.Write(fd, b[off:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		off += n
	}
	return nil
}

func tcpSocket(a netip.Addr) (int, error) {
	domain := unix.AF_INET
	if a.Is6() && !a.Is4In6() {
		domain = unix.AF_INET6
	}
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, fmt.Errorf("pktgen: tcp socket: %w", err)
	}
	return fd, nil
}
