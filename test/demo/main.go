package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/patu-dev/patu/internal/rtlab"
)

func main() {
	cfg := defaultConfig()
	flag.BoolVar(&cfg.Quick, "quick", false, "a smaller transfer and 1 s sockperf runs")
	flag.StringVar(&cfg.Flavor, "flavor", rtlab.Flavor16, `containerd to run: "1.6" (Debian's) or "2" (from hack/e2e-deps.sh)`)
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "demo: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	// The context ends at the first Ctrl-C; the handler stays installed
	// until run returns, so a second one cannot cut the clean-up short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, os.Stdout)
	stop()
	switch {
	case err == errInterrupted:
		os.Exit(130) // as a shell reports a Ctrl-C; run has said it cleaned up
	case err != nil:
		fmt.Fprintf(os.Stderr, "\ndemo: %v\n", err)
		os.Exit(1)
	}
}
