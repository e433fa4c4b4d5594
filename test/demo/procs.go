package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/patu-dev/patu/netns"
)

// daemon is `patu daemon` running as a child process.
type daemon struct {
	cmd  *exec.Cmd
	log  string        // its stdout and stderr
	done chan struct{} // closed once it has been reaped
	err  error         // its exit status, valid after done
}

// startDaemon starts patu with args (a daemon command line with
// --ready-file) and waits until it has written the ready file, which it
// does after its first reconcile.
func startDaemon(ctx context.Context, patu string, args []string, logPath string) (*daemon, error) {
	ready := ""
	for i, a := range args {
		if a == "--ready-file" && i+1 < len(args) {
			ready = args[i+1]
		}
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("daemon log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(patu, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A Ctrl-C is the demo's to handle: it stops the daemon in its
		// turn during clean-up.
		Setpgid: true,
		// Gone with the demo, should the demo be killed outright.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start patu daemon: %w", err)
	}
	dm := &daemon{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		dm.err = cmd.Wait()
		close(dm.done)
	}()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		if exists(ready) {
			return dm, nil
		}
		select {
		case <-dm.done:
			return nil, fmt.Errorf("patu daemon exited during start-up (%v)%s", dm.err, dm.logTail())
		case <-deadline.C:
			dm.stop()
			return nil, fmt.Errorf("patu daemon not ready after 30 s%s", dm.logTail())
		case <-ctx.Done():
			dm.stop()
			return nil, context.Cause(ctx)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (dm *daemon) running() bool {
	select {
	case <-dm.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits for the daemon to exit, with SIGKILL after
// 10 s. A daemon already gone is fine; calling stop again is too.
func (dm *daemon) stop() error {
	if !dm.running() {
		return nil
	}
	if err := dm.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-dm.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	dm.cmd.Process.Kill()
	<-dm.done
	return errors.New("ignored SIGTERM for 10 s, killed")
}

// logTail returns the end of the daemon's log, to append to an error.
func (dm *daemon) logTail() string {
	b, err := os.ReadFile(dm.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return fmt.Sprintf("\npatu daemon log %s, last lines:\n%s", dm.log, strings.Join(lines, "\n"))
}

// startInPod starts cmd inside pod p: in the pod's network namespace and
// in its container's cgroup, where `crictl exec` puts a process. The
// cgroup is set by clone3(CLONE_INTO_CGROUP), and the fork happens on a
// thread that netns.Do has moved into the namespace, so the process is in
// both from its first instruction: no socket it opens escapes Patu.
func startInPod(p *pod, cmd *exec.Cmd) error {
	cg, err := os.Open(p.cgroup)
	if err != nil {
		return fmt.Errorf("open cgroup of pod %s: %w", p.name, err)
	}
	defer cg.Close() // the child is in the cgroup once Start returns
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    int(cg.Fd()),
		Setpgid:     true, // see startDaemon
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := netns.Do(p.netns, cmd.Start); err != nil {
		return fmt.Errorf("start %s in pod %s: %w", cmd.Args[0], p.name, err)
	}
	return nil
}

// waitListening waits until a TCP socket of process pid listens on port,
// checked in /proc/PID/net (the process's network namespace) rather than
// by connecting, which would be one more connection for Patu and the
// server to see. exited, when not nil, ends the wait early.
func waitListening(ctx context.Context, pid, port int, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hexPort := fmt.Sprintf(":%04X", port)
	for {
		for _, f := range []string{"tcp", "tcp6"} {
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
			for _, line := range strings.Split(string(data), "\n") {
				// sl local_address rem_address st ...; st 0A is LISTEN.
				fs := strings.Fields(line)
				if len(fs) > 3 && strings.HasSuffix(fs[1], hexPort) && fs[3] == "0A" {
					return nil
				}
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("process %d exited before listening on port %d", pid, port)
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
				return fmt.Errorf("nothing listening on port %d in process %d's namespace after 10 s", port, pid)
			}
			return context.Cause(ctx)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// background is a process started with startInPod that runs until stopped.
type background struct {
	cmd  *exec.Cmd
	out  bytes.Buffer // read only after done
	done chan struct{}
}

func startBackground(ctx context.Context, p *pod, name string, args ...string) (*background, error) {
	b := &background{cmd: exec.CommandContext(ctx, name, args...), done: make(chan struct{})}
	b.cmd.Stdout, b.cmd.Stderr = &b.out, &b.out
	b.cmd.WaitDelay = 2 * time.Second
	if err := startInPod(p, b.cmd); err != nil {
		return nil, err
	}
	go func() {
		b.cmd.Wait()
		close(b.done)
	}()
	return b, nil
}

// stop kills the process and waits for it.
func (b *background) stop() {
	b.cmd.Process.Kill()
	<-b.done
}

// freeAddr returns a free TCP address on 127.0.0.1 for the daemon's
// metrics.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
