// Command patu loads Patu's data plane and manages it by hand: endpoints,
// cgroup attachments and counters. The runtime watcher uses the same
// packages; this is the interface for plain netns/cgroup setups and for
// debugging.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintf(os.Stderr, "patu: %v\n\n%s", err, usage)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "patu: %v\n", err)
		os.Exit(1)
	}
}
