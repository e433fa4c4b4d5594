package apps

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/patu-dev/patu/internal/gotool"
)

// Path is a data path a case runs on.
type Path string

const (
	// Bridge is the node's normal path: Patu not loaded.
	Bridge Path = "bridge"
	// Patu is Patu's default: loaded, every pod registered, the local
	// packet path.
	Patu Path = "patu"
	// PatuSocket is Patu with every pod opted in to the socket path.
	PatuSocket Path = "patu-socket"
	// PatuClusterIP is Patu's default with every client dialing its
	// server through a Service: kube-proxy's DNAT in the node picks the
	// pod, and Patu is told nothing about the Service.
	PatuClusterIP Path = "patu-clusterip"
)

// DefaultPaths are the paths a run covers unless PATU_APPS_PATHS says
// otherwise: the socket path is opt-in for applications, and so here.
var DefaultPaths = []Path{Bridge, Patu, PatuClusterIP}

// PathsFromEnv returns the paths PATU_APPS_PATHS names (comma-separated:
// bridge, patu, patu-socket, patu-clusterip), DefaultPaths when it is empty. The bridge
// path is always first: the others are compared with it.
func PathsFromEnv() ([]Path, error) {
	v := strings.TrimSpace(os.Getenv("PATU_APPS_PATHS"))
	if v == "" {
		return DefaultPaths, nil
	}
	out := []Path{Bridge}
	for _, s := range strings.Split(v, ",") {
		switch p := Path(strings.TrimSpace(s)); p {
		case Bridge, "":
		case Patu, PatuSocket, PatuClusterIP:
			out = append(out, p)
		default:
			return nil, fmt.Errorf("PATU_APPS_PATHS: unknown path %q (want bridge, patu, patu-socket, patu-clusterip)", s)
		}
	}
	return out, nil
}

// Config sets up a Runner.
type Config struct {
	// Prefix names the runner's topologies (netns, bridge, veths), cgroup
	// parent (patu-<Prefix>) and pin directory (/sys/fs/bpf/patu-<Prefix>):
	// 3-4 lowercase letters or digits starting with "ap".
	Prefix string
	// Subnet4 and Subnet6 are the pods' subnets (a /24 and a /112 or
	// smaller), inside 10.210.0.0/16 and fd00:210::/64.
	Subnet4, Subnet6 netip.Prefix
	// Scale divides every case's transfer sizes (1: the full sizes, as the
	// benchmark runs them). Nothing is ever paced: a smaller transfer is
	// the only way a run gets shorter.
	Scale int
	// Log receives progress; nil for none.
	Log *slog.Logger
}

// Runner runs cases. It builds the Go helpers once (patu-testpeer, the Go
// proxy) and keeps the data files the cases send.
type Runner struct {
	cfg Config
	dir string
	// peerBin is patu-testpeer, proxyBin the header-reading Go proxy.
	peerBin, proxyBin string
	log               *slog.Logger
	files             map[string]string // data files by name, made once
	pgTemplate        string            // an initdb'd data directory, copied per run
}

var prefixRE = regexp.MustCompile(`^ap[a-z0-9]{1,2}$`)

// NewRunner checks cfg and builds the Go helpers. Close removes them.
func NewRunner(ctx context.Context, cfg Config) (*Runner, error) {
	if !prefixRE.MatchString(cfg.Prefix) {
		return nil, fmt.Errorf("apps: prefix %q: want ap followed by 1-2 lowercase letters or digits", cfg.Prefix)
	}
	if !cfg.Subnet4.Addr().Is4() || cfg.Subnet4.Bits() < 16 || !cfg.Subnet6.Addr().Is6() || cfg.Subnet6.Bits() < 64 {
		return nil, fmt.Errorf("apps: subnets %s, %s: want an IPv4 and an IPv6 prefix", cfg.Subnet4, cfg.Subnet6)
	}
	if cfg.Scale < 1 {
		cfg.Scale = 1
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("apps: the suite needs root (network namespaces, cgroups, BPF)")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp("", "patu-apps-")
	if err != nil {
		return nil, fmt.Errorf("apps: %w", err)
	}
	// Programs that run as other users (postgres) read the runner's files.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("apps: %w", err)
	}
	r := &Runner{cfg: cfg, dir: dir, log: log, files: map[string]string{},
		peerBin: filepath.Join(dir, "patu-testpeer"), proxyBin: filepath.Join(dir, "patu-apps-goproxy")}
	for _, b := range []struct{ out, pkg string }{
		{r.peerBin, "github.com/patu-dev/patu/test/peer"},
		{r.proxyBin, "github.com/patu-dev/patu/internal/apps/goproxy"},
	} {
		out, err := exec.CommandContext(ctx, gotool.Path(), "build", "-o", b.out, b.pkg).CombinedOutput()
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("apps: build %s: %w: %s", b.pkg, err, out)
		}
	}
	return r, nil
}

// Close removes the runner's helpers and data files.
func (r *Runner) Close() error {
	return os.RemoveAll(r.dir)
}

// size scales a full-size transfer down by the runner's Scale, keeping at
// least 1 MiB.
func (r *Runner) size(full int64) int64 {
	return max(full/int64(r.cfg.Scale), 1<<20)
}

// count scales a full-size repetition count down, keeping at least min.
func (r *Runner) count(full, least int) int {
	return max(full/r.cfg.Scale, least)
}

// Missing lists the programs the cases need that are not installed.
func Missing(cases []Case) []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range cases {
		for _, t := range c.Tools {
			if seen[t] {
				continue
			}
			seen[t] = true
			if _, err := exec.LookPath(t); err != nil {
				if _, serr := os.Stat(t); serr != nil {
					out = append(out, t)
				}
			}
		}
	}
	return out
}

// timeout is how long a case's applications may take: its Timeout at
// scale 1; smaller scales shrink it, but not below a minute, which
// start-up of the slowest programs (the JVM, postgres) needs on a loaded
// 2-CPU node.
func (r *Runner) timeout(c Case) time.Duration {
	return max(c.Timeout/time.Duration(r.cfg.Scale), min(c.Timeout, time.Minute))
}
