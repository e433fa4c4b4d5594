package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/internal/testnet"
)

// server is a tool running in the background in a pod (sockperf sr,
// iperf3 -s). Its output is kept for the report when something fails.
type server struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	out    bytes.Buffer // read only after done is closed
	done   chan struct{}
	err    error
}

// startServer starts name args in pod p and waits until a socket listens on
// port in the pod's network namespace. The server is killed after timeout
// whatever happens, so a stuck tool cannot outlive its measurement.
func startServer(ctx context.Context, p *testnet.Pod, timeout time.Duration, port int, name string, args ...string) (*server, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	s := &server{cancel: cancel, done: make(chan struct{})}
	s.cmd = p.Command(ctx, name, args...)
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	s.cmd.WaitDelay = 2 * time.Second
	if err := s.cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	// Listening is checked in /proc/PID/net rather than by connecting,
	// which would use up iperf3's one test.
	deadline := time.Now().Add(5 * time.Second)
	for {
		up, err := listening(s.cmd.Process.Pid, p.NetnsPath, port)
		if err == nil && up {
			return s, nil
		}
		select {
		case <-s.done:
			cancel()
			return nil, fmt.Errorf("%s exited before listening on port %d: %v: %s", name, port, s.err, tail(s.out.String(), 500))
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("%s not listening on port %d after 5s: %s", name, port, tail(s.out.String(), 500))
		}
	}
}

// stop kills the server (if it has not exited by itself) and waits for it.
func (s *server) stop() {
	s.cancel()
	<-s.done
}

// wait waits up to d for the server to exit by itself, then kills it. It
// reports whether the server exited by itself.
func (s *server) wait(d time.Duration) bool {
	select {
	case <-s.done:
		s.cancel()
		return true
	case <-time.After(d):
		s.stop()
		return false
	}
}

// listening reports whether pid is in the network namespace at nsPath and
// a TCP socket there listens on port. Until the testnet shim has exec'd
// the tool, /proc/PID/net shows the node's namespace, where the port may
// mean something else.
func listening(pid int, nsPath string, port int) (bool, error) {
	var want, got unix.Stat_t
	if err := unix.Stat(nsPath, &want); err != nil {
		return false, fmt.Errorf("stat %s: %w", nsPath, err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &got); err != nil {
		return false, fmt.Errorf("netns of pid %d: %w", pid, err)
	}
	if want.Dev != got.Dev || want.Ino != got.Ino {
		return false, nil
	}
	hexPort := fmt.Sprintf(":%04X", port)
	for _, f := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			return false, fmt.Errorf("read socket table of pid %d: %w", pid, err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fs := strings.Fields(line)
			// sl local_address rem_address st ...; st 0A is TCP_LISTEN.
			if len(fs) > 3 && strings.HasSuffix(fs[1], hexPort) && fs[3] == "0A" {
				return true, nil
			}
		}
	}
	return false, nil
}

// runClient runs name args in pod p to completion or timeout, calling
// onLine for each line of its combined output as it is printed, so that
// the caller can sample the CPU at the moments the tool says its test
// starts and ends. It returns the whole output.
func runClient(ctx context.Context, p *testnet.Pod, timeout time.Duration, onLine func(string), name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := p.Command(ctx, name, args...)
	r, w, err := os.Pipe()
	if err != nil {
		return "", fmt.Errorf("pipe for %s: %w", name, err)
	}
	defer r.Close()
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		w.Close()
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	w.Close() // the child holds its own copy; EOF comes when it exits
	var out strings.Builder
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line)
		out.WriteByte('\n')
		if onLine != nil {
			onLine(line)
		}
	}
	err = cmd.Wait()
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return out.String(), fmt.Errorf("%s timed out after %s", name, timeout)
	case ctx.Err() != nil:
		return out.String(), fmt.Errorf("%s: %w", name, ctx.Err())
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out.String(), fmt.Errorf("%s exited with %d: %s", name, ee.ExitCode(), tail(out.String(), 500))
		}
		return out.String(), fmt.Errorf("%s: %w", name, err)
	}
	return out.String(), nil
}

// withCPU prefixes a command with taskset when it must run on one CPU.
func withCPU(cpu int, name string, args ...string) (string, []string) {
	if cpu < 0 {
		return name, args
	}
	return "taskset", append([]string{"-c", strconv.Itoa(cpu), name}, args...)
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
