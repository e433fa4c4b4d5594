package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patu-dev/patu/bpf"
	"github.com/patu-dev/patu/internal/peerresult"
	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/pods"
)

// peerBin is patu-testpeer, built once by TestMain.
var peerBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Getenv("PATU_SKIP_PRIVILEGED") == "1" {
		fmt.Println("integration: PATU_SKIP_PRIVILEGED=1, privileged tests skip")
		return m.Run()
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "integration tests need root (netns, cgroups, BPF); run as root or set PATU_SKIP_PRIVILEGED=1 to skip them")
		return 1
	}
	// PATU_TESTPEER names a patu-testpeer built beforehand: the kernel
	// matrix's guests have no Go toolchain to spare.
	if peerBin = os.Getenv("PATU_TESTPEER"); peerBin != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "patu-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	peerBin = filepath.Join(dir, "patu-testpeer")
	out, err := exec.Command("go", "build", "-o", peerBin, "github.com/patu-dev/patu/test/peer").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build patu-testpeer: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// mode is the path a scenario runs on.
type mode string

const (
	bridgePath mode = "bridge" // Patu not loaded
	packetPath mode = "packet" // Patu loaded, pods registered: its default, the local packet path
	socketPath mode = "socket" // the same, pods opted in to the socket path
)

// allPaths are the paths every scenario that an application could meet
// runs on; the socket path only where its own rules are under test too.
var allPaths = []mode{bridgePath, packetPath, socketPath}

func (m mode) patu() bool { return m != bridgePath }

type env struct {
	t    *testing.T
	net  *testnet.Net
	dp   *bpf.Datapath
	mode mode
}

// setup builds a topology of n pods and, on the Patu path, loads Patu with
// its own pin directory, attaches every pod and registers its addresses.
// Each test passes its own prefix and subnet index so tests never collide
// with each other or with a leftover of a crashed run.
func setup(t *testing.T, prefix string, subnet int, n int, m mode, opts bpf.Options) *env {
	t.Helper()
	return setupNet(t, netConfig(prefix, subnet, n), m, opts)
}

// netConfig is the topology setup builds: n pods on subnet 10.201.<subnet>.
func netConfig(prefix string, subnet, n int) testnet.Config {
	return testnet.Config{
		Prefix:  prefix,
		Subnet4: netip.MustParsePrefix(fmt.Sprintf("10.201.%d.0/24", subnet)),
		Subnet6: netip.MustParsePrefix(fmt.Sprintf("fd00:201:%d::/64", subnet)),
		Pods:    n,
	}
}

// socketPathOff is why the socket path is off on this kernel, once a load
// found it off: later socket-path subtests skip before building their
// topology (seconds each in the kernel matrix's emulated guests).
var socketPathOff atomic.Pointer[string]

// setupNet is setup on a topology of the caller's making.
func setupNet(t *testing.T, cfg testnet.Config, m mode, opts bpf.Options) *env {
	t.Helper()
	testnet.Privileged(t)
	if why := socketPathOff.Load(); m == socketPath && why != nil {
		t.Skipf("the socket path is off on this kernel: %s", *why)
	}
	// PATU_TEST_PREFIX goes before every test's prefix: a run beside
	// another run of the same tests on one machine keeps its own names.
	cfg.Prefix = os.Getenv("PATU_TEST_PREFIX") + cfg.Prefix
	prefix := cfg.Prefix
	testnet.Sweep(prefix)
	nt, err := testnet.New(cfg)
	if err != nil {
		t.Fatalf("topology: %v", err)
	}
	t.Cleanup(func() {
		if err := nt.Close(); err != nil {
			t.Errorf("remove topology: %v", err)
		}
	})
	e := &env{t: t, net: nt, mode: m}
	if m.patu() {
		opts.PinDir = "/sys/fs/bpf/patu-it-" + prefix
		bpf.Unload(opts.PinDir) // leftovers of a crashed run
		dp, err := bpf.Load(opts)
		if err != nil {
			t.Fatalf("load patu: %v", err)
		}
		e.dp = dp
		t.Cleanup(func() {
			dp.Close()
			if _, err := bpf.Unload(opts.PinDir); err != nil {
				t.Errorf("unload: %v", err)
			}
		})
		if f := dp.Features().Get(bpf.FeatureSocketPath); m == socketPath && !f.On {
			socketPathOff.Store(&f.Reason)
			t.Skipf("the socket path is off on this kernel: %s", f.Reason)
		}
		for _, p := range nt.Pods {
			e.register(p)
		}
	}
	return e
}

// register records a pod as the CNI plugin does (addresses, host veth,
// MACs; opted in to the socket path on that path) and attaches its
// cgroup, from the node's network namespace where its host veth is.
func (e *env) register(p *testnet.Pod) {
	e.t.Helper()
	e.registerAs(p, e.mode == socketPath, false)
}

// registerAs registers p with the given opt-in and opt-out.
func (e *env) registerAs(p *testnet.Pod, socket, optOut bool) {
	e.t.Helper()
	rec := bpf.Pod{ID: "it-" + p.Name, Namespace: "it", Name: p.Name, Netns: p.NetnsPath,
		IPs: []netip.Addr{p.IPv4, p.IPv6}, HostIfindex: uint32(p.HostIfindex), HostMAC: p.HostMAC, PodMAC: p.PodMAC,
		Socket: socket, NoRedirect: optOut, Source: bpf.PodFromCNI, Confirmed: true, Created: time.Now()}
	err := e.net.Node.Do(func() error {
		if _, err := pods.Register(e.dp, rec); err != nil {
			return err
		}
		return pods.SetCgroups(e.dp, rec.ID, []string{p.CgroupDir})
	})
	if err != nil {
		e.t.Fatalf("register %s: %v", p.Name, err)
	}
}

// local returns the local packet path's counters.
func (e *env) local() bpf.LocalCounters {
	e.t.Helper()
	if e.dp == nil {
		return bpf.LocalCounters{}
	}
	c, err := e.dp.LocalCounters()
	if err != nil {
		e.t.Fatalf("local counters: %v", err)
	}
	return c
}

func (e *env) counters() bpf.Counters {
	e.t.Helper()
	if e.dp == nil {
		return bpf.Counters{}
	}
	c, err := e.dp.Counters()
	if err != nil {
		e.t.Fatalf("counters: %v", err)
	}
	return c
}

// serve starts a patu-testpeer server in pod p and waits until it listens.
func (e *env) serve(p *testnet.Pod, addr netip.AddrPort, serveMode string, extra ...string) {
	e.t.Helper()
	ready := filepath.Join(e.t.TempDir(), "ready")
	ctx, cancel := context.WithCancel(context.Background())
	args := append([]string{"serve", "--listen", addr.String(), "--mode", serveMode, "--ready-file", ready}, extra...)
	cmd := p.Command(ctx, peerBin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		e.t.Fatalf("start server in %s: %v", p.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			return
		}
		select {
		case <-done:
			e.t.Fatalf("server %s exited before listening: %s", serveMode, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("server %s not ready after 10s: %s", serveMode, stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type result = peerresult.Result

// client runs patu-testpeer client in pod p to completion.
func (e *env) client(p *testnet.Pod, timeout time.Duration, args ...string) (result, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := p.Command(ctx, peerBin, append([]string{"client"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	res, perr := peerresult.Parse(stdout.Bytes())
	if perr != nil && !errors.Is(perr, peerresult.ErrNoResult) {
		return res, perr
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("client %v timed out after %s (stderr: %s)", args, timeout, tail(stderr.String()))
	}
	if runErr != nil {
		return res, fmt.Errorf("client %v: %w (result %+v, stderr: %s)", args, runErr, res, tail(stderr.String()))
	}
	return res, nil
}

func tail(s string) string {
	if len(s) > 2000 {
		return "…" + s[len(s)-2000:]
	}
	return s
}

func addr(ip netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(ip, port) }

// families names the IPv4 and the IPv6 address of pod p.
func families(p *testnet.Pod) map[string]netip.Addr {
	return map[string]netip.Addr{"ipv4": p.IPv4, "ipv6": p.IPv6}
}
