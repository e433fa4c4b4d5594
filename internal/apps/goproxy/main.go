// Command patu-apps-goproxy is the shape of Traefik's TCP routers and of
// PROXY-protocol front ends: it reads a header line naming the backend
// ("host:port\n") from each client with plain reads, dials the backend,
// then moves the rest of both directions with io.Copy between the two
// *net.TCPConn, which Go does with splice(2). The suite runs it between
// pods (internal/apps, case goproxy).
//
//	patu-apps-goproxy -listen ADDR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
)

func main() {
	listen := flag.String("listen", "", "address to listen on, host:port")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, log, *listen); err != nil {
		fmt.Fprintf(os.Stderr, "patu-apps-goproxy: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, addr string) error {
	if addr == "" {
		return errors.New("-listen is required")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := proxy(c.(*net.TCPConn)); err != nil {
				log.Error("proxy", "client", c.RemoteAddr().String(), "error", err)
			}
		}()
	}
}

// proxy serves one client.
func proxy(client *net.TCPConn) error {
	defer client.Close()
	target, err := readLine(client)
	if err != nil {
		return fmt.Errorf("read header: %w", err)
	}
	backend, err := net.Dial("tcp", target)
	if err != nil {
		return fmt.Errorf("dial %s: %w", target, err)
	}
	be := backend.(*net.TCPConn)
	defer be.Close()
	errs := make(chan error, 2)
	pipe := func(dst, src *net.TCPConn) {
		_, err := io.Copy(dst, src) // dst.ReadFrom(src): splice(2)
		dst.CloseWrite()
		errs <- err
	}
	go pipe(be, client)
	go pipe(client, be)
	return errors.Join(<-errs, <-errs)
}

// readLine reads up to and including the first newline one byte at a
// time, so that nothing after the header is taken out of the socket:
// what follows is left to io.Copy.
func readLine(c *net.TCPConn) (string, error) {
	var sb strings.Builder
	b := make([]byte, 1)
	for sb.Len() < 512 {
		if _, err := io.ReadFull(c, b); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			return sb.String(), nil
		}
		sb.WriteByte(b[0])
	}
	return "", errors.New("header line longer than 512 bytes")
}
