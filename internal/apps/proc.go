package apps

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/internal/testnet"
)

// Env is what a case's Run works with: its pods and scratch directory, and
// ways to run programs in the pods.
type Env struct {
	// Pods are the run's pods: 0 the client, 1 the server, 2 a backend.
	Pods []*testnet.Pod
	// Path is the path the run is on; cases must not depend on it.
	Path Path
	// Dir is the run's scratch directory (world-readable).
	Dir string

	r        *Runner
	t        *topo
	mu       sync.Mutex
	procs    []*Proc
	stopErrs []string
}

// To is the address a client dials to reach pod i: the pod's own, or on
// PatuClusterIP a Service's cluster IP whose one endpoint is pod i.
func (e *Env) To(i int) netip.Addr {
	if e.Path == PatuClusterIP {
		return clusterIP(i, false)
	}
	return e.Pods[i].IPv4
}

// To6 is To for IPv6.
func (e *Env) To6(i int) netip.Addr {
	if e.Path == PatuClusterIP {
		return clusterIP(i, true)
	}
	return e.Pods[i].IPv6
}

// Proc is a program started in a pod.
type Proc struct {
	Name   string
	pod    *testnet.Pod
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
	err    error
	// waited is set once the case took the program's result: an exit is
	// then the case's business, not a server dying under it.
	waited bool
}

// Start starts name args in pod p in the background. The program runs
// until it exits or the run ends (SIGTERM, then SIGKILL of the pod's
// cgroup).
func (e *Env) Start(p *testnet.Pod, name string, args ...string) (*Proc, error) {
	cmd := p.Command(context.Background(), name, args...)
	pr := &Proc{Name: name, pod: p, done: make(chan struct{})}
	if name == "sh" && len(args) == 2 {
		pr.Name = "sh -c " + firstWords(args[1], 4)
	}
	cmd.Stdout, cmd.Stderr = &pr.stdout, &pr.stderr
	// A child that outlives the program (a pipeline's socat after its
	// shell was killed) keeps the output pipes open: without a bound,
	// Wait would wait for it, and a hang would hang the suite.
	cmd.WaitDelay = 2 * time.Second
	cmd.Dir = e.Dir
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", pr.Name, p.Name, err)
	}
	pr.cmd = cmd
	go func() {
		pr.err = cmd.Wait()
		close(pr.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, pr)
	e.mu.Unlock()
	return pr, nil
}

// Sh starts a shell script in pod p in the background.
func (e *Env) Sh(p *testnet.Pod, script string) (*Proc, error) {
	return e.Start(p, "sh", "-c", script)
}

// Wait waits for the program to exit, or ctx to end (then kills it), and
// returns its standard output. A non-zero exit is an error carrying the
// end of its standard error.
func (pr *Proc) Wait(ctx context.Context) (string, error) {
	pr.waited = true
	select {
	case <-pr.done:
	case <-ctx.Done():
		// The whole pod's processes: the program's children too.
		pr.cmd.Process.Kill()
		killCgroup(pr.pod.CgroupDir)
		<-pr.done
		return pr.stdout.String(), fmt.Errorf("%s in %s: %w (stderr: %s)", pr.Name, pr.pod.Name, ctx.Err(), tail(pr.stderr.String()))
	}
	if pr.err != nil {
		return pr.stdout.String(), fmt.Errorf("%s in %s: %w (stderr: %s)", pr.Name, pr.pod.Name, pr.err, tail(pr.stderr.String()))
	}
	return pr.stdout.String(), nil
}

// Exited reports whether the program has exited.
func (pr *Proc) Exited() bool {
	select {
	case <-pr.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the program.
func (pr *Proc) Signal(sig syscall.Signal) error {
	return pr.cmd.Process.Signal(sig)
}

// Run runs name args in pod p to completion (or until ctx ends) and
// returns its standard output.
func (e *Env) Run(ctx context.Context, p *testnet.Pod, name string, args ...string) (string, error) {
	pr, err := e.Start(p, name, args...)
	if err != nil {
		return "", err
	}
	return pr.Wait(ctx)
}

// RunSh runs a shell script in pod p to completion.
func (e *Env) RunSh(ctx context.Context, p *testnet.Pod, script string) (string, error) {
	return e.Run(ctx, p, "sh", "-c", script)
}

// Listen waits until a TCP socket listens on port in pr's pod, or pr
// exits, or ctx ends.
func (e *Env) Listen(ctx context.Context, pr *Proc, port int) error {
	for {
		if ok, _ := listening(pr.cmd.Process.Pid, pr.pod.NetnsPath, port); ok {
			return nil
		}
		select {
		case <-pr.done:
			return fmt.Errorf("%s in %s exited before listening on port %d: %v (stderr: %s)",
				pr.Name, pr.pod.Name, port, pr.err, tail(pr.stderr.String()))
		case <-ctx.Done():
			return fmt.Errorf("%s in %s not listening on port %d: %w (stderr: %s)",
				pr.Name, pr.pod.Name, port, ctx.Err(), tail(pr.stderr.String()))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stopAll ends every program of the run: SIGTERM to each, up to 3 s for
// them to exit (servers close their connections), then SIGKILL to
// everything left in the pods' cgroups. A server that died before it was
// told to is an error of the run.
func (e *Env) stopAll() {
	e.mu.Lock()
	procs := e.procs
	e.mu.Unlock()
	for _, pr := range procs {
		if !pr.waited && pr.Exited() {
			e.stopErrs = append(e.stopErrs, fmt.Sprintf("%s in %s exited on its own: %v (stderr: %s)",
				pr.Name, pr.pod.Name, pr.err, tail(pr.stderr.String())))
		}
		if !pr.Exited() {
			pr.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.After(3 * time.Second)
	for _, pr := range procs {
		select {
		case <-pr.done:
		case <-deadline:
		}
	}
	for _, p := range e.Pods {
		if err := killCgroup(p.CgroupDir); err != nil {
			e.stopErrs = append(e.stopErrs, err.Error())
		}
	}
	for _, pr := range procs {
		select {
		case <-pr.done:
		case <-time.After(5 * time.Second):
			e.stopErrs = append(e.stopErrs, fmt.Sprintf("%s in %s still running 5 s after SIGKILL", pr.Name, pr.pod.Name))
		}
	}
}

// killCgroup kills every process in the cgroup at dir and waits until it
// is empty.
func killCgroup(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kill cgroup %s: %w", dir, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || strings.Contains(string(b), "populated 0") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still populated 5 s after cgroup.kill", dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listening reports whether pid is in the network namespace at nsPath
// (the testnet shim has entered it) and a TCP socket there listens on
// port.
func listening(pid int, nsPath string, port int) (bool, error) {
	var want, got unix.Stat_t
	if err := unix.Stat(nsPath, &want); err != nil {
		return false, err
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &got); err != nil {
		return false, err
	}
	if want.Dev != got.Dev || want.Ino != got.Ino {
		return false, nil
	}
	hexPort := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			return false, err
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fs := strings.Fields(line)
			// sl local_address rem_address st: 0A is TCP_LISTEN.
			if len(fs) > 3 && strings.HasSuffix(fs[1], hexPort) && fs[3] == "0A" {
				return true, nil
			}
		}
	}
	return false, nil
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 1500 {
		return "…" + s[len(s)-1500:]
	}
	return s
}

func firstWords(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		return strings.Join(f[:n], " ") + " …"
	}
	return strings.Join(f, " ")
}
