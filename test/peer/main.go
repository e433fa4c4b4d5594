// Command patu-testpeer moves verifiable byte patterns over TCP, for Patu's
// privileged tests and benchmarks. It runs inside test pods (see
// testnet.Pod.Command): a server in one pod, a client in another.
//
// Every byte at offset i of connection c is a keyed hash of (seed, c, i)
// (package internal/pattern), and every connection starts with a 16-byte
// header naming (c, seed, length), so any loss, duplication, reordering or
// corruption is detected. Each run prints one JSON result line on stdout
// when it ends; the exit code is 0 only when no connection failed.
//
//	patu-testpeer serve  --listen ADDR --mode echo|splice-echo|sink|stall|close-early --ready-file F ...
//	patu-testpeer client --connect ADDR --mode echo|sendfile|stream|stall-probe|rst ...
//
// Servers reply to a stream in one of two ways: echo modes send it back,
// sink modes verify it and answer with a 16-byte ack (magic "PTA1",
// status, bytes). Clients tell the two apart by the first 4 bytes, so any
// client mode works against either kind of server.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes a subcommand and returns the exit code: 0 success, 1 failed
// connections or errors, 2 bad usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: patu-testpeer serve|client [flags] (-h for flags)")
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "client":
		return runClient(ctx, args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "patu-testpeer: unknown subcommand %q: want serve or client\n", args[0])
		return 2
	}
}
