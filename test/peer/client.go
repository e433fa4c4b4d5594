package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/patu-dev/patu/internal/pattern"
)

type clientConfig struct {
	connect      string
	mode         string
	conns        int
	parallel     int
	min, max     int64
	seed         uint64
	duration     time.Duration
	bytes        int64
	chunkMax     int
	pauseMax     time.Duration
	firstPause   time.Duration
	probe        time.Duration
	timeout      time.Duration
	reportQueued bool
	mptcp        bool
}

// client runs the connections of one invocation.
type client struct {
	cfg clientConfig
	rec *recorder
	// sent is the payload written so far over all connections (progress).
	sent atomic.Int64
}

var clientModes = map[string]func(*client, context.Context, *net.TCPConn, uint32) (int64, error){
	"echo":        (*client).echo,
	"sendfile":    (*client).sendfile,
	"stream":      (*client).stream,
	"stall-probe": (*client).stallProbe,
	"rst":         (*client).rst,
}

func runClient(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg clientConfig
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.connect, "connect", "", "server address, host:port")
	fs.StringVar(&cfg.mode, "mode", "echo", "echo, sendfile, stream, stall-probe or rst")
	fs.IntVar(&cfg.conns, "conns", 1, "connections")
	fs.IntVar(&cfg.parallel, "parallel", 1, "connections in flight at once")
	fs.Int64Var(&cfg.min, "min", 1, "echo, sendfile: smallest payload in bytes")
	fs.Int64Var(&cfg.max, "max", 64<<10, "echo, sendfile: largest payload in bytes")
	fs.Uint64Var(&cfg.seed, "seed", 1, "pattern seed (32 bits); with the connection index it fixes every byte and payload size")
	fs.DurationVar(&cfg.duration, "duration", 0, "stream: how long to send (default 1s unless --bytes)")
	fs.Int64Var(&cfg.bytes, "bytes", 0, "stream: payload bytes per connection; stall-probe: cap on what the writer sends (default 512 MiB); rst: cap (default 64 MiB)")
	fs.IntVar(&cfg.chunkMax, "chunk-max", 0, "write in chunks of random size 1..N bytes (default: 64 KiB chunks, 16 KiB for stall-probe)")
	fs.DurationVar(&cfg.pauseMax, "pause-max", 0, "pause a random time up to this between chunks")
	fs.DurationVar(&cfg.firstPause, "first-pause", 0, "pause this long after the first chunk, as a client waiting for a reply would")
	fs.DurationVar(&cfg.probe, "probe", time.Second, "stall-probe: how long to let the writer fill the stalled path")
	fs.DurationVar(&cfg.timeout, "timeout", 0, "deadline per connection (default none; 10s for rst)")
	fs.BoolVar(&cfg.reportQueued, "report-queued", false, "stall-probe: also report the socket's send queue at the end of the probe")
	fs.BoolVar(&cfg.mptcp, "mptcp", false, "connect with MPTCP (falls back to TCP where unavailable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	connFn, ok := clientModes[cfg.mode]
	if err := cfg.check(ok); err != nil {
		fmt.Fprintf(stderr, "client: %v\n", err)
		return 2
	}
	cl := &client{cfg: cfg, rec: newRecorder(cfg.mode)}

	if cfg.mode == "stream" {
		stop := cl.progress(stderr)
		defer stop()
	}
	work := make(chan uint32)
	var wg sync.WaitGroup
	for range min(cfg.parallel, cfg.conns) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				cl.conn(ctx, i, connFn)
			}
		}()
	}
	for i := range cfg.conns {
		if ctx.Err() != nil {
			cl.rec.error(fmt.Errorf("interrupted before connection %d: %w", i, ctx.Err()))
			break
		}
		work <- uint32(i)
	}
	close(work)
	wg.Wait()
	return cl.rec.finish(stdout)
}

func (cfg *clientConfig) check(knownMode bool) error {
	switch {
	case !knownMode:
		return fmt.Errorf("unknown mode %q", cfg.mode)
	case cfg.connect == "":
		return errors.New("--connect is required")
	case cfg.conns < 1 || cfg.parallel < 1:
		return errors.New("--conns and --parallel must be at least 1")
	case cfg.min < 0 || cfg.max < cfg.min || cfg.max >= int64(pattern.UnknownLength):
		return fmt.Errorf("bad payload range [%d, %d]", cfg.min, cfg.max)
	case cfg.seed > math.MaxUint32:
		return fmt.Errorf("--seed %d does not fit in 32 bits", cfg.seed)
	case cfg.chunkMax < 0 || cfg.bytes < 0:
		return errors.New("--chunk-max and --bytes must not be negative")
	}
	switch cfg.mode {
	case "stream":
		if cfg.duration == 0 && cfg.bytes == 0 {
			cfg.duration = time.Second
		}
	case "stall-probe":
		if cfg.bytes == 0 {
			cfg.bytes = 512 << 20
		}
		if cfg.chunkMax == 0 {
			// Small writes: accepted_bytes counts whole write() calls.
			cfg.chunkMax = 16 << 10
		}
	case "rst":
		if cfg.bytes == 0 {
			cfg.bytes = 64 << 20
		}
		if cfg.timeout == 0 {
			cfg.timeout = 10 * time.Second
		}
	}
	return nil
}

// conn runs connection i and records its outcome.
func (cl *client) conn(ctx context.Context, i uint32, fn func(*client, context.Context, *net.TCPConn, uint32) (int64, error)) {
	var d net.Dialer
	d.Timeout = 10 * time.Second
	d.SetMultipathTCP(cl.cfg.mptcp)
	c, err := d.DialContext(ctx, "tcp", cl.cfg.connect)
	if err != nil {
		cl.rec.fail(fmt.Errorf("conn %d: %w", i, err))
		return
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	if cl.cfg.timeout > 0 {
		c.SetDeadline(time.Now().Add(cl.cfg.timeout))
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	n, err := fn(cl, ctx, tc, i)
	if cl.cfg.mode == "rst" {
		// Any error is a valid end here; a deadline is a hang.
		cl.rec.kind(err)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			cl.rec.fail(fmt.Errorf("conn %d: no end within %s: %w", i, cl.cfg.timeout, err))
			return
		}
		cl.rec.ok(n)
		return
	}
	if err != nil {
		cl.rec.fail(fmt.Errorf("conn %d: %w", i, err))
		return
	}
	cl.rec.ok(n)
}

// rng returns connection i's random source, derived from the seed so that
// a run is repeatable.
func (cl *client) rng(i uint32, purpose uint64) *rand.Rand {
	return rand.New(rand.NewPCG(cl.cfg.seed<<8|purpose, uint64(i)))
}

func (cl *client) header(i uint32, length int64) pattern.Header {
	h := pattern.Header{Conn: i, Seed: uint32(cl.cfg.seed), Length: pattern.UnknownLength}
	if length >= 0 && length < int64(pattern.UnknownLength) {
		h.Length = uint32(length)
	}
	return h
}

// payloadSize picks connection i's payload size in [min, max].
func (cl *client) payloadSize(i uint32) int64 {
	return cl.cfg.min + cl.rng(i, 1).Int64N(cl.cfg.max-cl.cfg.min+1)
}

// writer writes a header and the pattern stream to a connection.
type writer struct {
	c          *net.TCPConn
	cl         *client
	h          pattern.Header
	rng        *rand.Rand
	chunkMax   int
	pauseMax   time.Duration
	firstPause time.Duration
	// sent is the payload written so far; written only by the writer's
	// goroutine, read by others (stall-probe).
	sent atomic.Int64
}

func (cl *client) newWriter(c *net.TCPConn, i uint32, h pattern.Header) *writer {
	return &writer{c: c, cl: cl, h: h, rng: cl.rng(i, 2), chunkMax: cl.cfg.chunkMax, pauseMax: cl.cfg.pauseMax,
		firstPause: cl.cfg.firstPause}
}

// write sends the header and payload bytes until limit (if >= 0) is
// reached or more() says stop; it does not close.
func (w *writer) write(limit int64, more func() bool) error {
	s := w.h.Stream()
	chunk := 64 << 10
	if w.chunkMax > 0 {
		chunk = w.chunkMax
	}
	buf := make([]byte, pattern.HeaderLen+chunk)
	hb := w.h.Marshal()
	// The header goes out with the first chunk, in one write, the way a
	// client sends a request right after connect.
	copy(buf, hb[:])
	head := pattern.HeaderLen
	var off int64
	for {
		n := int64(chunk)
		if w.chunkMax > 0 {
			n = 1 + w.rng.Int64N(int64(w.chunkMax))
		}
		if limit >= 0 {
			n = min(n, limit-off)
		}
		if n <= 0 && head == 0 {
			return nil
		}
		p := buf[:head+int(n)]
		s.Fill(p[head:], off)
		if _, err := w.c.Write(p); err != nil {
			return fmt.Errorf("write at offset %d: %w", off, err)
		}
		off += n
		w.sent.Store(off)
		w.cl.sent.Add(n)
		head = 0
		if (limit >= 0 && off >= limit) || (more != nil && !more()) {
			return nil
		}
		if off == n && w.firstPause > 0 {
			time.Sleep(w.firstPause)
		}
		if w.pauseMax > 0 {
			time.Sleep(time.Duration(w.rng.Int64N(int64(w.pauseMax))))
		}
	}
}

// readResponse reads the server's answer to the stream of h: its echo,
// verified as it arrives, or a sink's ack. It returns the payload bytes
// the server confirmed.
func readResponse(c *net.TCPConn, h pattern.Header) (int64, error) {
	var first [pattern.HeaderLen]byte
	if _, err := io.ReadFull(c, first[:4]); err != nil {
		return 0, fmt.Errorf("read response: %w", err)
	}
	switch binary.BigEndian.Uint32(first[:]) {
	case pattern.Magic:
		if _, err := io.ReadFull(c, first[4:]); err != nil {
			return 0, fmt.Errorf("read echoed header: %w", err)
		}
		if want := h.Marshal(); !bytes.Equal(first[:], want[:]) {
			return 0, fmt.Errorf("echoed header %x, sent %x", first, want)
		}
		v := h.Stream().NewVerifier()
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, err := v.Write(buf[:n]); err != nil {
					return v.Offset(), fmt.Errorf("echo: %w", err)
				}
			}
			if errors.Is(err, io.EOF) {
				return v.Offset(), nil
			}
			if err != nil {
				return v.Offset(), fmt.Errorf("read echo after %d bytes: %w", v.Offset(), err)
			}
		}
	case ackMagic:
		if _, err := io.ReadFull(c, first[4:ackLen]); err != nil {
			return 0, fmt.Errorf("read ack: %w", err)
		}
		st := ackStatus(binary.BigEndian.Uint32(first[4:]))
		n := int64(binary.BigEndian.Uint64(first[8:]))
		if st != ackOK {
			return n, fmt.Errorf("server: %s after %d bytes", st, n)
		}
		if extra, err := c.Read(first[:1]); extra > 0 || !errors.Is(err, io.EOF) {
			return n, fmt.Errorf("no EOF after the ack: %d bytes, %v", extra, err)
		}
		return n, nil
	default:
		return 0, fmt.Errorf("unexpected response %x", first[:4])
	}
}

// exchange runs send (which writes the stream and returns the payload
// length sent) while reading the response, and checks that the server
// confirmed everything sent.
func exchange(c *net.TCPConn, h pattern.Header, send func() (int64, error)) (int64, error) {
	type sendResult struct {
		n   int64
		err error
	}
	done := make(chan sendResult, 1)
	go func() {
		n, err := send()
		if err == nil {
			if cerr := c.CloseWrite(); cerr != nil {
				err = fmt.Errorf("half-close: %w", cerr)
			}
		}
		done <- sendResult{n, err}
	}()
	got, rerr := readResponse(c, h)
	if rerr != nil {
		// Unblock a writer the server no longer reads for.
		c.Close()
	}
	s := <-done
	switch {
	case rerr != nil && s.err != nil:
		return 0, fmt.Errorf("%w (send: %v)", rerr, s.err)
	case rerr != nil:
		return 0, rerr
	case s.err != nil:
		return 0, s.err
	case got != s.n:
		return 0, fmt.Errorf("server confirmed %d of %d payload bytes", got, s.n)
	}
	return s.n, nil
}

// echo sends a payload of random size right after connect, half-closes,
// and verifies the response byte for byte.
func (cl *client) echo(_ context.Context, c *net.TCPConn, i uint32) (int64, error) {
	size := cl.payloadSize(i)
	h := cl.header(i, size)
	w := cl.newWriter(c, i, h)
	return exchange(c, h, func() (int64, error) {
		return size, w.write(size, nil)
	})
}

// sendfile writes the header and payload to a temporary file and sends
// it with (*net.TCPConn).ReadFrom(*os.File), for which Go uses
// sendfile(2).
func (cl *client) sendfile(_ context.Context, c *net.TCPConn, i uint32) (int64, error) {
	size := cl.payloadSize(i)
	h := cl.header(i, size)
	f, err := os.CreateTemp("", "patu-testpeer-*")
	if err != nil {
		return 0, fmt.Errorf("payload file: %w", err)
	}
	defer f.Close()
	os.Remove(f.Name()) // unlinked now; the open file stays readable
	hb := h.Marshal()
	if _, err := f.Write(hb[:]); err != nil {
		return 0, fmt.Errorf("payload file: %w", err)
	}
	if _, err := io.CopyN(f, h.Stream().NewReader(), size); err != nil {
		return 0, fmt.Errorf("payload file: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("payload file: %w", err)
	}
	return exchange(c, h, func() (int64, error) {
		n, err := c.ReadFrom(f)
		if err != nil {
			return 0, fmt.Errorf("sendfile after %d bytes: %w", n, err)
		}
		if n != pattern.HeaderLen+size {
			return 0, fmt.Errorf("sendfile sent %d of %d bytes", n, pattern.HeaderLen+size)
		}
		cl.sent.Add(size)
		return size, nil
	})
}

// stream writes the pattern for --duration or --bytes on one long
// connection and verifies the response.
func (cl *client) stream(_ context.Context, c *net.TCPConn, i uint32) (int64, error) {
	limit := int64(-1)
	if cl.cfg.bytes > 0 {
		limit = cl.cfg.bytes
	}
	h := cl.header(i, limit)
	var more func() bool
	if cl.cfg.duration > 0 {
		end := time.Now().Add(cl.cfg.duration)
		more = func() bool { return time.Now().Before(end) }
	}
	w := cl.newWriter(c, i, h)
	return exchange(c, h, func() (int64, error) {
		err := w.write(limit, more)
		return w.sent.Load(), err
	})
}

// stallProbe writes as fast as write() accepts to a server that does not
// read, and reports how much was accepted after --probe: with working
// backpressure the writer blocks after about the socket buffers. Then it
// finishes the stream and checks the server got all of it.
func (cl *client) stallProbe(_ context.Context, c *net.TCPConn, i uint32) (int64, error) {
	h := cl.header(i, -1)
	w := cl.newWriter(c, i, h)
	var stop atomic.Bool
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		time.Sleep(cl.cfg.probe)
		accepted := w.sent.Load()
		var q, u int64
		var qerr error
		if cl.cfg.reportQueued {
			q, u, qerr = sendQueue(c)
		}
		stop.Store(true)
		cl.rec.update(func(r *result) {
			r.AcceptedBytes += accepted
			if cl.cfg.reportQueued && qerr == nil {
				r.QueuedBytes = ptrAdd(r.QueuedBytes, q)
				r.UnsentBytes = ptrAdd(r.UnsentBytes, u)
			}
		})
	}()
	n, err := exchange(c, h, func() (int64, error) {
		err := w.write(cl.cfg.bytes, func() bool { return !stop.Load() })
		return w.sent.Load(), err
	})
	<-probeDone
	return n, err
}

func ptrAdd(p *int64, v int64) *int64 {
	if p != nil {
		v += *p
	}
	return &v
}

// SIOCOUTQNSD is the ioctl for the bytes in a TCP socket's send queue not
// yet sent (linux/sockios.h); syscall does not define it.
const SIOCOUTQNSD = 0x894b

// sendQueue returns the bytes in c's send queue (sent but unacknowledged
// included) and the unsent part.
func sendQueue(c *net.TCPConn) (queued, unsent int64, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var q, u int32
	var errno syscall.Errno
	cerr := rc.Control(func(fd uintptr) {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&q))); e != 0 {
			errno = e
			return
		}
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, SIOCOUTQNSD, uintptr(unsafe.Pointer(&u))); e != 0 {
			errno = e
		}
	})
	if cerr != nil {
		return 0, 0, cerr
	}
	if errno != 0 {
		return 0, 0, errno
	}
	return int64(q), int64(u), nil
}

// rst streams to a server that closes early. Any error ends it; what
// matters is that it ends (the deadline makes a hang a failure).
func (cl *client) rst(_ context.Context, c *net.TCPConn, i uint32) (int64, error) {
	h := cl.header(i, -1)
	w := cl.newWriter(c, i, h)
	if err := w.write(cl.cfg.bytes, nil); err != nil {
		return w.sent.Load(), err
	}
	if err := c.CloseWrite(); err != nil {
		return w.sent.Load(), err
	}
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF // the server closed normally after reading everything
	}
	return w.sent.Load(), err
}

// progress prints the payload sent so far to stderr every 100 ms.
func (cl *client) progress(stderr io.Writer) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(stderr, "sent %d bytes\n", cl.sent.Load())
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}
