package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bind-mounted, as with `ip netns add`.
const RunDir = "/run/netns"

// Path returns the file of the named namespace name, /run/netns/NAME.
func Path(name string) string { return filepath.Join(RunDir, name) }

// Do runs fn on an OS thread whose network namespace is the one at path (a
// file such as /run/netns/NAME or /proc/PID/ns/net). Sockets and netlink
// handles fn creates belong to that namespace and stay there after Do
// returns; processes forked by fn start in it.
//
// fn must not start goroutines that expect to run in the namespace: only the
// calling goroutine is on the switched thread. A panic in fn is propagated
// to the caller of Do after the thread has been restored.
func Do(path string, fn func() error) error {
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(target)
	return onThread(func() error {
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return fn()
	})
}

// Create makes a new network namespace and bind-mounts it at
// /run/netns/NAME, like `ip netns add NAME`, and returns that path. It fails
// when the name is taken.
func Create(name string) (string, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return "", fmt.Errorf("create netns %q: invalid name", name)
	}
	if err := prepareRunDir(); err != nil {
		return "", err
	}
	path := Path(name)
	// O_EXCL: a second instance with the same name must fail, not share.
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()
	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		// /proc/self would name the thread group leader, which is still in
		// the old namespace; only this thread has the new one.
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount: %w", err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	return path, nil
}

// Delete removes the named namespace created by Create or `ip netns add`:
// it unmounts and removes /run/netns/NAME. The namespace itself lives on
// while processes or sockets still hold it. A missing name is not an error.
func Delete(name string) error {
	path := Path(name)
	// MNT_DETACH, as iproute2 does: a namespace in use by another mount
	// namespace must not make the delete fail.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete netns %s: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// prepareRunDir creates /run/netns and makes it a shared mount point, as
// iproute2 does, so namespaces mounted there propagate to mount namespaces
// created later (and a namespace unmounted here disappears there too).
func prepareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("make %s a shared mount: %w", RunDir, err)
	}
	// EINVAL: not a mount point yet. Bind it onto itself and retry.
	if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount %s onto itself: %w", RunDir, err)
	}
	if err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", RunDir, err)
	}
	return nil
}

// onThread runs fn on a new goroutine locked to its OS thread, then moves
// the thread back to the network namespace it started in. The thread goes
// back to the scheduler only when that worked; otherwise the goroutine
// exits still locked and the runtime terminates the thread.
//
// A new goroutine, rather than the caller's, so that a failed restore never
// leaves the caller running in the wrong namespace, even when the caller had
// locked its own thread.
func onThread(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		panic    any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open current netns: %w", err)}
			return
		}
		res := result{panicked: true}
		// Deferred so that the thread is restored however fn ends: return,
		// panic, or runtime.Goexit (t.FailNow inside fn).
		defer func() {
			if res.panicked {
				res.panic = recover()
				if res.panic == nil {
					res.err = errors.New("function called runtime.Goexit inside the network namespace")
				}
			}
			restoreErr := unix.Setns(orig, unix.CLONE_NEWNET)
			unix.Close(orig)
			if restoreErr != nil {
				// Deliberately no UnlockOSThread: see above.
				res.err = errors.Join(res.err, fmt.Errorf("restore netns (thread discarded): %w", restoreErr))
			} else {
				runtime.UnlockOSThread()
			}
			done <- res
		}()
		res.err = fn()
		res.panicked = false
	}()
	res := <-done
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}

// Dial connects to address from inside the network namespace at path: the
// socket is made there, then used from any thread (a local service of a
// test's node namespace, say).
func Dial(ctx context.Context, path, network, address string) (net.Conn, error) {
	var c net.Conn
	err := Do(path, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}
