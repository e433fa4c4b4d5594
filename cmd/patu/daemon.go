package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/containerd"
	"github.com/patu-dev/patu/runtime/cri"
	"github.com/patu-dev/patu/watcher"
)

const daemonUsage = `usage: patu daemon [flags]

Loads Patu (idempotent), then keeps its pods in step with the container
runtime: every ready pod sandbox is registered and its cgroups attached.

flags:
  --runtime-endpoint SOCK   CRI socket (default: the first of ` + "%s" + `)
  --namespace NS            containerd namespace of the event stream (default k8s.io)
  --events auto|containerd|cri
                            event source; auto tries containerd's stream (it reports a new
                            container's pid before the app runs), then CRI GetContainerEvents
  --resync DUR              full reconcile period without events (default 5m)
  --poll DUR                reconcile period when the runtime sends no events at all,
                            e.g. CRI-O with enable_pod_events = false (default 5s)
  --xdp-iface IF[,IF]       attach the XDP fast path to these uplinks: traffic from them to
                            pod addresses and hostPorts skips the bridge and netfilter (xdp -h)
  --xdp-mode native|generic XDP mode (default native, generic where the driver has none)
  --big-tcp SIZE            GSO size for every registered pod's interface (BIG TCP, e.g. 196608):
                            fewer, larger packets between pods; 0 for none (default: keep what
                            patu load set). Pods' packets to other nodes are cut in software
                            where the uplink cannot take them whole: only with a BIG TCP NIC
  --metrics-addr ADDR       serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9465)
  --ready-file FILE         write FILE after the first successful reconcile
  --log-level LEVEL         debug, info, warn or error (default info)
`

func cmdDaemon(ctx context.Context, out io.Writer, pinDir string, args []string) error {
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoint := fs.String("runtime-endpoint", "", "")
	namespace := fs.String("namespace", "k8s.io", "")
	events := fs.String("events", "auto", "")
	resync := fs.Duration("resync", 5*time.Minute, "")
	poll := fs.Duration("poll", 5*time.Second, "")
	xdpIfaces := fs.String("xdp-iface", "", "")
	xdpMode := fs.String("xdp-mode", "", "")
	metricsAddr := fs.String("metrics-addr", "", "")
	readyFile := fs.String("ready-file", "", "")
	level := fs.String("log-level", "info", "")
	bigTCP := fs.Int("big-tcp", -1, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(out, daemonUsage, strings.Join(runtime.Endpoints, ", "))
			return nil
		}
		return usagef("daemon: %v", err)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return usagef("daemon: --log-level %q: want debug, info, warn or error", *level)
	}
	switch *events {
	case "auto", "containerd", "cri":
	default:
		return usagef("daemon: --events %q: want auto, containerd or cri", *events)
	}
	switch *xdpMode {
	case "", string(bpf.XDPNative), string(bpf.XDPGeneric):
	default:
		return usagef("daemon: --xdp-mode %q: want native or generic", *xdpMode)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	// The live heap is well under 1 MiB; Go's default pacing would let it
	// grow to a 4 MiB goal in a burst of pods. Half that costs a few more
	// collections of a tiny heap, during bursts only. GOGC overrides it.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}

	dp, loadOut, err := loadLean(ctx, pinDir, *bigTCP)
	if err != nil {
		return err
	}
	defer dp.Close()
	// What the load said: the kernel features on and off, and why.
	log.Info("patu loaded", "bpffs", pinDir, "load", loadOut)
	if *xdpIfaces != "" {
		// Before the first reconcile, so that every pod it registers is
		// readied for the XDP path. Detaching is left to `patu xdp
		// detach`: like the socket path, it outlives the daemon.
		for _, iface := range strings.Split(*xdpIfaces, ",") {
			mode, err := attachXDP(dp, strings.TrimSpace(iface), bpf.XDPMode(*xdpMode))
			if err != nil {
				return err
			}
			log.Warn("xdp fast path on: what it redirects bypasses netfilter", "uplink", iface, "mode", mode)
		}
	}

	if *endpoint == "" {
		if *endpoint, err = runtime.FindEndpoint(); err != nil {
			return err
		}
	}
	client, err := dialRuntime(ctx, log, *endpoint)
	if err != nil {
		return err
	}
	defer client.Close()
	name, version := client.RuntimeName()
	log.Info("connected to the runtime", "endpoint", client.Endpoint(), "runtime", name, "version", version)

	var sources []watcher.Source
	if *events != "cri" {
		sources = append(sources, &containerdEvents{endpoint: client.Endpoint(), namespace: *namespace})
	}
	if *events != "containerd" {
		sources = append(sources, criEvents{client})
	}
	w, err := watcher.New(watcher.Config{
		Datapath: dp,
		Runtime:  client,
		Sources:  sources,
		Resync:   *resync,
		Poll:     *poll,
		Log:      log,
		// A burst of pods leaves the heap grown; Go would keep it for
		// minutes. Give it back once things are quiet.
		OnIdle: debug.FreeOSMemory,
	})
	if err != nil {
		return err
	}
	if *metricsAddr != "" {
		srv, err := serveMetrics(*metricsAddr, w.Metrics().Handler(dp))
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("serving metrics", "addr", *metricsAddr)
	}
	if *readyFile != "" {
		go func() {
			select {
			case <-ctx.Done():
			case <-w.Ready():
				if err := writeFileAtomic(*readyFile, []byte(fmt.Sprintln(os.Getpid()))); err != nil {
					log.Error("write ready file", "error", err)
				}
			}
		}()
	}
	err = w.Run(ctx)
	log.Info("patu daemon stopped; pinned state stays in the kernel")
	return err
}

// loadLean loads the programs in a child process ("patu load") and then
// opens the pinned maps. Loading parses the kernel's BTF and the ELF, which
// would leave the long-lived daemon several MiB larger for good; the daemon
// lives on nodes where every MiB counts.
func loadLean(ctx context.Context, pinDir string, bigTCP int) (*bpf.Datapath, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("find own executable to run patu load: %w", err)
	}
	out, err := exec.CommandContext(ctx, self, "--bpffs", pinDir, "load", "--big-tcp", strconv.Itoa(bigTCP)).CombinedOutput()
	if err != nil {
		return nil, "", fmt.Errorf("patu load: %w: %s", err, bytes.TrimSpace(out))
	}
	dp, err := bpf.Open(pinDir)
	return dp, string(bytes.TrimSpace(out)), err
}

// dialRuntime connects to the runtime, waiting for it with backoff: the
// daemon may start before the runtime does.
func dialRuntime(ctx context.Context, log *slog.Logger, endpoint string) (*cri.Client, error) {
	retry := runtime.Backoff{Min: 200 * time.Millisecond, Max: 10 * time.Second}
	for {
		c, err := cri.Dial(ctx, endpoint)
		if err == nil {
			return c, nil
		}
		if errors.Is(err, runtime.ErrUnsupported) || ctx.Err() != nil {
			return nil, err
		}
		d := retry.Next()
		log.Warn("runtime not reachable, retrying", "endpoint", endpoint, "error", err, "retry_in", d)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(d):
		}
	}
}

// criEvents is the CRI GetContainerEvents stream as a watcher source.
type criEvents struct{ c *cri.Client }

func (criEvents) Name() string { return runtime.SourceCRI }

func (s criEvents) Watch(ctx context.Context, fn func(runtime.Event)) error {
	return s.c.WatchEvents(ctx, fn)
}

// containerdEvents is containerd's event stream as a watcher source. It
// dials for each watch, since the stream ends with every runtime restart.
type containerdEvents struct {
	endpoint, namespace string
}

func (*containerdEvents) Name() string { return runtime.SourceContainerd }

func (s *containerdEvents) Watch(ctx context.Context, fn func(runtime.Event)) error {
	c, err := containerd.Dial(ctx, s.endpoint, s.namespace)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.WatchEvents(ctx, fn)
}

func serveMetrics(addr string, h http.Handler) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}

func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".patu-ready-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	tmp.Close()
	return os.Rename(tmp.Name(), path)
}
