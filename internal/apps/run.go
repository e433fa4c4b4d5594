package apps

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/nodepath"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/pods"
)

// Case is one application scenario.
type Case struct {
	// Name is short and unique: it names subtests and report rows.
	Name string
	// Desc says what runs, for the report.
	Desc string
	// Pods is the number of pods the case needs (2 or 3): pod 0 is the
	// client, pod 1 the server, pod 2 a backend.
	Pods int
	// Tools are the programs the case runs.
	Tools []string
	// Timeout bounds the applications' run at scale 1 (see Runner.timeout).
	Timeout time.Duration
	// Prepare, when set, makes what the case needs before its runs (data
	// files, a database template), outside the measured window; it is
	// called before every run and must be cheap the second time.
	Prepare func(ctx context.Context) error
	// Run starts the applications in env and returns what they observed.
	// It returns once every client finished; servers it started with
	// env.Start are stopped by the runner.
	Run func(ctx context.Context, env *Env) (Observed, error)
	// NoBench keeps the case out of the benchmark: it measures no
	// transfer (its point is an error or a state).
	NoBench bool
}

// Observed is what the applications of a run saw.
type Observed struct {
	// Digest must be identical on every path: checksums of what was
	// received, counts of what succeeded, the kind of error where the
	// case provokes one.
	Digest string `json:"digest"`
	// Payload is the application bytes moved, for throughput.
	Payload int64 `json:"payload_bytes"`
}

// Outcome is one run of a case on a path.
type Outcome struct {
	Case     string        `json:"case"`
	Path     Path          `json:"path"`
	Observed Observed      `json:"observed"`
	Took     time.Duration `json:"took_ns"`
	// Hang is set when the applications did not finish within the
	// case's timeout.
	Hang bool `json:"hang,omitempty"`
	// Errors are the run's failed checks and errors; empty when it passed
	// every check that needs no other path.
	Errors []string `json:"errors,omitempty"`
	Stats  Stats    `json:"stats"`
	// LoadAvg is /proc/loadavg before the run: the kernel CPU figures are
	// the whole machine's, so others' load shows here.
	LoadAvg string `json:"loadavg"`
}

// Failed reports whether the run failed a check of its own.
func (o Outcome) Failed() bool { return len(o.Errors) > 0 }

// MBps is the payload throughput over the applications' run.
func (o Outcome) MBps() float64 {
	if o.Took <= 0 {
		return 0
	}
	return float64(o.Observed.Payload) / 1e6 / o.Took.Seconds()
}

func (o *Outcome) fail(format string, args ...any) {
	o.Errors = append(o.Errors, fmt.Sprintf(format, args...))
}

// settle is how long the conntrack and lifecycle checks wait.
const settle = 5 * time.Second

// Run runs c on path p in a fresh topology and checks it. It never
// returns early on a failed check: every check that can run does, and
// everything created is removed.
func (r *Runner) Run(ctx context.Context, c Case, p Path) Outcome {
	o := Outcome{Case: c.Name, Path: p}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		o.LoadAvg = strings.TrimSpace(string(b))
	}
	r.log.Info("app case", "case", c.Name, "path", p)
	if c.Prepare != nil {
		if err := c.Prepare(ctx); err != nil {
			o.fail("prepare: %v", err)
			return o
		}
	}
	t, err := r.setup(c, p)
	if err != nil {
		o.fail("set up: %v", err)
		if t != nil {
			if err := t.close(); err != nil {
				o.fail("clean up: %v", err)
			}
		}
		return o
	}
	defer func() {
		if err := t.close(); err != nil {
			o.fail("clean up: %v", err)
		}
	}()
	r.runCase(ctx, c, t, &o)
	return o
}

// runCase runs the applications and every check on topology t.
func (r *Runner) runCase(ctx context.Context, c Case, t *topo, o *Outcome) {
	env := &Env{r: r, t: t, Pods: t.net.Pods, Path: t.path, Dir: t.dir}
	before, err := t.snapshot()
	if err != nil {
		o.fail("read counters: %v", err)
		return
	}
	limit := r.timeout(c)
	cctx, cancel := context.WithTimeout(ctx, limit)
	start := time.Now()
	obs, runErr := c.Run(cctx, env)
	o.Took = time.Since(start)
	hung := cctx.Err() != nil && ctx.Err() == nil
	cancel()
	// The counters before the servers stop: the node's CPU is read for
	// the whole machine, so the window is kept to the transfer.
	after, err := t.snapshot()
	if err != nil {
		o.fail("read counters: %v", err)
	}
	// The applications close: servers get SIGTERM, then SIGKILL.
	env.stopAll()
	o.Observed = obs
	o.Stats = after.sub(before)
	switch {
	case hung:
		o.Hang = true
		o.fail("hang: the applications did not finish within %s: %v", limit, runErr)
	case runErr != nil:
		o.fail("%v", runErr)
	}
	if o.Observed.Digest == "" && runErr == nil {
		o.fail("the case observed nothing (empty digest)")
	}
	for _, e := range env.stopErrs {
		o.fail("%s", e)
	}
	r.checkConntrack(t, before, o)
	r.checkLifecycle(t, o)
}

// topo is a run's topology: the pods, the node's netfilter and, on Patu's
// paths, Patu loaded with its own pin directory.
type topo struct {
	net      *testnet.Net
	path     Path
	dir      string // the run's scratch directory
	cgParent string
	pinDir   string
	dp       *bpf.Datapath
	unloaded bool
	deleted  map[int]bool // pods deleted by the lifecycle check
	subnet4  netip.Prefix
	subnet6  netip.Prefix
	prefix   string
	// after runs when the topology is removed: what a case holds open
	// past the checks (the self-tests).
	after []func()
}

func (r *Runner) setup(c Case, p Path) (*topo, error) {
	mnt, err := cgroup.Mount2()
	if err != nil {
		return nil, err
	}
	t := &topo{path: p, prefix: r.cfg.Prefix, subnet4: r.cfg.Subnet4, subnet6: r.cfg.Subnet6,
		cgParent: filepath.Join(mnt, "patu-"+r.cfg.Prefix), pinDir: "/sys/fs/bpf/patu-" + r.cfg.Prefix, deleted: map[int]bool{}}
	sweep(t)
	if t.dir, err = os.MkdirTemp(r.dir, c.Name+"-"+string(p)+"-"); err != nil {
		return nil, err
	}
	// The pods' programs (postgres, nginx workers) may run as other users.
	if err := os.Chmod(t.dir, 0o755); err != nil {
		return t, err
	}
	t.net, err = testnet.New(testnet.Config{Prefix: r.cfg.Prefix, Subnet4: r.cfg.Subnet4, Subnet6: r.cfg.Subnet6,
		Pods: c.Pods, CgroupParent: t.cgParent})
	if err != nil {
		return t, err
	}
	// The rules live in the node namespace and go with it: no undo.
	_, err = nodepath.Apply(t.net.Node.NetnsPath, nodepath.Config{Bridge: t.net.Bridge,
		PodSubnet4: r.cfg.Subnet4, PodSubnet6: r.cfg.Subnet6,
		// Kubernetes-shaped rules around the pods: synthetic services
		// addressed where no case connects, and on PatuClusterIP one
		// Service in front of each server pod, which its clients dial.
		ServiceCIDR4: serviceCIDR4, ServiceCIDR6: serviceCIDR6,
		RemotePods4: netip.MustParsePrefix("10.210.224.0/20"), RemotePods6: netip.MustParsePrefix("fd00:210::e:0/112"),
		Services: 20, Extra: podServices(p, t.net.Pods)})
	if err != nil {
		return t, fmt.Errorf("node path: %w", err)
	}
	if p == Bridge {
		return t, nil
	}
	t.dp, err = bpf.Load(bpf.Options{PinDir: t.pinDir})
	if err != nil {
		return t, fmt.Errorf("load patu: %w", err)
	}
	for _, pod := range t.net.Pods {
		rec := bpf.Pod{ID: "apps-" + pod.Name, Namespace: "apps", Name: pod.Name, Netns: pod.NetnsPath,
			IPs: []netip.Addr{pod.IPv4, pod.IPv6}, HostIfindex: uint32(pod.HostIfindex), HostMAC: pod.HostMAC,
			PodMAC: pod.PodMAC, Socket: p == PatuSocket, Source: bpf.PodFromCNI, Confirmed: true, Created: time.Now()}
		// From the node's namespace, where the host veths are, as the CNI
		// plugin runs.
		err := t.net.Node.Do(func() error {
			if _, err := pods.Register(t.dp, rec); err != nil {
				return err
			}
			return pods.SetCgroups(t.dp, rec.ID, []string{pod.CgroupDir})
		})
		if err != nil {
			return t, fmt.Errorf("register %s: %w", pod.Name, err)
		}
	}
	return t, nil
}

var (
	serviceCIDR4 = netip.MustParsePrefix("10.210.240.0/20")
	serviceCIDR6 = netip.MustParsePrefix("fd00:210::f:0/112")
)

// clusterIP is the address of the Service in front of pod i, at the top
// of the service range, away from the synthetic services at its bottom.
func clusterIP(i int, v6 bool) netip.Addr {
	if v6 {
		a := serviceCIDR6.Addr().As16()
		a[14], a[15] = 0xff, byte(i)
		return netip.AddrFrom16(a)
	}
	a := serviceCIDR4.Addr().As4()
	a[2], a[3] = 255, byte(i)
	return netip.AddrFrom4(a)
}

// podServices are, on PatuClusterIP, one Service per family in front of
// every pod but the client, as kube-proxy renders them: any port (the
// cases pick theirs) kept by the DNAT.
func podServices(p Path, pods []*testnet.Pod) []nodepath.Service {
	if p != PatuClusterIP {
		return nil
	}
	var out []nodepath.Service
	for i, pod := range pods[1:] {
		for _, ep := range []netip.Addr{pod.IPv4, pod.IPv6} {
			out = append(out, nodepath.Service{Name: fmt.Sprintf("apps/%s:any", pod.Name),
				ClusterIP: clusterIP(i+1, ep.Is6()), Endpoints: []netip.Addr{ep}})
		}
	}
	return out
}

// sweep removes what a crashed run with the same prefix left behind.
func sweep(t *topo) {
	testnet.Sweep(t.prefix)
	if _, err := os.Stat(t.cgParent); err == nil {
		os.WriteFile(filepath.Join(t.cgParent, "cgroup.kill"), []byte("1"), 0)
		time.Sleep(50 * time.Millisecond)
		cgroup.Remove(t.cgParent)
	}
	bpf.Unload(t.pinDir)
}

// close removes the topology and unloads Patu, whatever state they are in.
func (t *topo) close() error {
	var errs []error
	for _, f := range t.after {
		f()
	}
	if t.dp != nil {
		t.dp.Close()
		if !t.unloaded {
			if _, err := bpf.Unload(t.pinDir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if t.net != nil {
		if err := t.net.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := cgroup.Remove(t.cgParent); err != nil {
			errs = append(errs, err)
		}
	}
	if t.dir != "" {
		os.RemoveAll(t.dir)
	}
	// A drained path whose pods are gone is removed by the next unload.
	if t.dp != nil {
		if _, err := bpf.Unload(t.pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
