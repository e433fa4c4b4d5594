package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/patu-dev/patu/internal/pattern"
)

type serveConfig struct {
	listen    string
	mode      string
	readyFile string
	conns     int
	stall     time.Duration
	readFirst int64
	rst       bool
	slow      bool
	mptcp     bool
	readRate  float64 // sink: MB/s, 0 for no cap
}

var serveModes = map[string]func(*serveConfig, *net.TCPConn, time.Time) (int64, error){
	"echo":        (*serveConfig).echo,
	"splice-echo": (*serveConfig).spliceEcho,
	"sink":        (*serveConfig).sink,
	"stall":       (*serveConfig).sink,
	"close-early": (*serveConfig).closeEarly,
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg serveConfig
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", "", "address to listen on, host:port (port 0 picks one; see --ready-file)")
	fs.StringVar(&cfg.mode, "mode", "echo", "echo, splice-echo (io.Copy between *net.TCPConn: splice(2)), sink, stall or close-early")
	fs.StringVar(&cfg.readyFile, "ready-file", "", "file written with the listening address once the server accepts connections")
	fs.IntVar(&cfg.conns, "conns", 0, "exit after this many connections (0: until SIGTERM)")
	fs.DurationVar(&cfg.stall, "stall", 3*time.Second, "stall: time from accept to reading the rest")
	fs.Int64Var(&cfg.readFirst, "read-first", -1, "stall, close-early: payload bytes read before stalling or closing (default 0 for stall, 1024 for close-early)")
	fs.BoolVar(&cfg.rst, "rst", false, "close-early: close with SO_LINGER 0 (RST)")
	fs.BoolVar(&cfg.slow, "slow", false, "echo: read in small random pieces with short random pauses")
	fs.Float64Var(&cfg.readRate, "read-rate", 0, "sink: read no faster than this many MB/s on average, as a reader that does work on the bytes (0: as fast as it verifies)")
	fs.BoolVar(&cfg.mptcp, "mptcp", false, "listen with MPTCP (falls back to TCP where unavailable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	handle, ok := serveModes[cfg.mode]
	if !ok {
		fmt.Fprintf(stderr, "serve: unknown mode %q\n", cfg.mode)
		return 2
	}
	if cfg.listen == "" {
		fmt.Fprintln(stderr, "serve: --listen is required")
		return 2
	}
	if cfg.readFirst < 0 {
		cfg.readFirst = 0
		if cfg.mode == "close-early" {
			cfg.readFirst = 1024
		}
	}

	rec := newRecorder(cfg.mode)
	var lc net.ListenConfig
	lc.SetMultipathTCP(cfg.mptcp)
	ln, err := lc.Listen(ctx, "tcp", cfg.listen)
	if err != nil {
		rec.error(fmt.Errorf("listen: %w", err))
		return rec.finish(stdout)
	}
	defer ln.Close()
	if cfg.readyFile != "" {
		if err := writeFileAtomic(cfg.readyFile, ln.Addr().String()+"\n"); err != nil {
			rec.error(fmt.Errorf("ready file: %w", err))
			return rec.finish(stdout)
		}
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var wg sync.WaitGroup
	for accepted := 0; cfg.conns == 0 || accepted < cfg.conns; accepted++ {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				rec.error(fmt.Errorf("accept: %w", err))
			}
			break
		}
		at := time.Now()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			// On SIGTERM, unblock the handler so the result still prints.
			stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
			defer stop()
			n, err := handle(&cfg, c.(*net.TCPConn), at)
			if cfg.mode == "close-early" {
				// Any error is an acceptable outcome here; only the kind
				// is of interest.
				rec.kind(err)
				rec.ok(n)
				return
			}
			if err != nil {
				rec.fail(fmt.Errorf("conn from %s: %w", c.RemoteAddr(), err))
				return
			}
			rec.ok(n)
		}()
	}
	ln.Close()
	wg.Wait()
	return rec.finish(stdout)
}

// echo sends back what it reads, with plain read(2)/write(2), until EOF,
// then half-closes.
func (cfg *serveConfig) echo(c *net.TCPConn, _ time.Time) (int64, error) {
	buf := make([]byte, 256<<10)
	var rng *rand.Rand
	if cfg.slow {
		rng = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	}
	var total int64
	for {
		b := buf
		if rng != nil {
			b = buf[:1+rng.IntN(16<<10)]
		}
		n, err := c.Read(b)
		if n > 0 {
			if _, err := c.Write(b[:n]); err != nil {
				return total, fmt.Errorf("write echo: %w", err)
			}
			total += int64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return total, fmt.Errorf("read: %w", err)
		}
		if rng != nil {
			time.Sleep(time.Duration(rng.Int64N(int64(200 * time.Microsecond))))
		}
	}
	if err := c.CloseWrite(); err != nil {
		return total, fmt.Errorf("half-close: %w", err)
	}
	return total, nil
}

// spliceEcho is an echo through io.Copy between the *net.TCPConn and
// itself, for which Go uses splice(2): what Go proxies do.
func (cfg *serveConfig) spliceEcho(c *net.TCPConn, _ time.Time) (int64, error) {
	n, err := io.Copy(c, c)
	if err != nil {
		return n, fmt.Errorf("splice copy: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return n, fmt.Errorf("half-close: %w", err)
	}
	return n, nil
}

// sink reads a header and the stream until EOF, verifying it, and answers
// with an ack. In stall mode it reads only --read-first payload bytes,
// then stops reading until --stall after accept.
func (cfg *serveConfig) sink(c *net.TCPConn, acceptedAt time.Time) (int64, error) {
	var hb [pattern.HeaderLen]byte
	if _, err := io.ReadFull(c, hb[:]); err != nil {
		c.Write(marshalAck(ackHeader, 0))
		return 0, fmt.Errorf("read header: %w", err)
	}
	h, err := pattern.ParseHeader(hb[:])
	if err != nil {
		c.Write(marshalAck(ackHeader, 0))
		return 0, err
	}
	v := h.Stream().NewVerifier()
	fail := func(st ackStatus, err error) (int64, error) {
		c.Write(marshalAck(st, v.Offset()))
		return v.Offset(), fmt.Errorf("conn %d seed %d: %w", h.Conn, h.Seed, err)
	}
	buf := make([]byte, 256<<10)
	if cfg.mode == "stall" {
		if cfg.readFirst > 0 {
			if _, err := io.CopyBuffer(v, io.LimitReader(c, cfg.readFirst), buf); err != nil {
				return fail(ackRead, fmt.Errorf("read first bytes: %w", err))
			}
		}
		time.Sleep(time.Until(acceptedAt.Add(cfg.stall)))
	}
	start := time.Now()
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := v.Write(buf[:n]); werr != nil {
				return fail(ackMismatch, werr)
			}
			if cfg.readRate > 0 {
				// Sleep off what is ahead of the rate.
				due := time.Duration(float64(v.Offset()) / (cfg.readRate * 1e6) * float64(time.Second))
				if d := due - time.Since(start); d > 0 {
					time.Sleep(d)
				}
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fail(ackRead, fmt.Errorf("read: %w", err))
		}
	}
	if h.Length != pattern.UnknownLength && v.Offset() != int64(h.Length) {
		return fail(ackLength, fmt.Errorf("got %d payload bytes, header says %d", v.Offset(), h.Length))
	}
	if _, err := c.Write(marshalAck(ackOK, v.Offset())); err != nil {
		return v.Offset(), fmt.Errorf("write ack: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return v.Offset(), fmt.Errorf("half-close: %w", err)
	}
	return v.Offset(), nil
}

// closeEarly reads the header and --read-first bytes, then closes while
// the client is still sending: with unread data that sends a RST anyway,
// with --rst (SO_LINGER 0) always.
func (cfg *serveConfig) closeEarly(c *net.TCPConn, _ time.Time) (int64, error) {
	n, err := io.CopyN(io.Discard, c, pattern.HeaderLen+cfg.readFirst)
	if cfg.rst {
		if lerr := c.SetLinger(0); lerr != nil {
			return n, fmt.Errorf("set SO_LINGER 0: %w", lerr)
		}
	}
	if cerr := c.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return n, err
}

// writeFileAtomic writes a file so that no reader sees it partly written.
func writeFileAtomic(path, content string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ready-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
