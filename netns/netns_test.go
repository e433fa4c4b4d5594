package netns_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"github.com/patu-dev/patu/internal/testnet"
	"github.com/patu-dev/patu/netns"
)

// inode returns the inode of a namespace file: two files name the same
// namespace when their inodes are equal (nsfs has one device).
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func create(t *testing.T, name string) string {
	t.Helper()
	netns.Delete(name) // leftover of a crashed run
	path, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(name); err != nil {
			t.Error(err)
		}
	})
	return path
}

func TestCreateDoDelete(t *testing.T) {
	testnet.Privileged(t)
	orig := inode(t, "/proc/thread-self/ns/net")
	path := create(t, "tnns-a")
	if path != "/run/netns/tnns-a" {
		t.Fatalf("path %q", path)
	}
	target := inode(t, path)
	if target == orig {
		t.Fatal("new namespace is the current one")
	}
	var inside uint64
	var ifaces []net.Interface
	err := netns.Do(path, func() error {
		inside = inode(t, "/proc/thread-self/ns/net")
		var err error
		ifaces, err = net.Interfaces()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if inside != target {
		t.Fatalf("fn ran in netns %d, want %d", inside, target)
	}
	if len(ifaces) != 1 || ifaces[0].Name != "lo" {
		t.Fatalf("new namespace has interfaces %v, want only lo", ifaces)
	}
	if _, err := netns.Create("tnns-a"); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second create: %v, want ErrExist", err)
	}
	if err := netns.Delete("tnns-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still there after delete: %v", path, err)
	}
	if err := netns.Delete("tnns-a"); err != nil {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestCreateInvalidName(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "../x"} {
		if _, err := netns.Create(name); err == nil {
			t.Errorf("Create(%q) succeeded", name)
		}
	}
}

func TestDoMissing(t *testing.T) {
	err := netns.Do(filepath.Join(t.TempDir(), "nope"), func() error {
		t.Error("fn ran")
		return nil
	})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want ErrNotExist", err)
	}
}

// TestDoRestoresEveryThread runs many Do calls at once, with errors and
// panics, then checks that no thread of the process stayed behind.
func TestDoRestoresEveryThread(t *testing.T) {
	testnet.Privileged(t)
	orig := inode(t, "/proc/self/ns/net")
	path := create(t, "tnns-b")
	errBoom := errors.New("boom")
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch i % 3 {
			case 0:
				if err := netns.Do(path, func() error { return nil }); err != nil {
					t.Error(err)
				}
			case 1:
				if err := netns.Do(path, func() error { return errBoom }); !errors.Is(err, errBoom) {
					t.Errorf("got %v, want boom", err)
				}
			case 2:
				func() {
					defer func() {
						if r := recover(); r != "panic inside" {
							t.Errorf("recovered %v", r)
						}
					}()
					netns.Do(path, func() error { panic("panic inside") })
				}()
			}
		}()
	}
	wg.Wait()
	tasks, err := filepath.Glob("/proc/self/task/*/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		var st syscall.Stat_t
		if err := syscall.Stat(task, &st); err != nil {
			continue // thread exited meanwhile
		}
		if st.Ino != orig {
			t.Errorf("%s is in netns %d, want %d", task, st.Ino, orig)
		}
	}
}

// TestDoGoexit: a fn that ends its goroutine (what t.FailNow does) must
// not leave Do waiting forever.
func TestDoGoexit(t *testing.T) {
	testnet.Privileged(t)
	path := create(t, "tnns-c")
	err := netns.Do(path, func() error {
		runtime.Goexit()
		return nil
	})
	if err == nil {
		t.Fatal("Do returned nil after fn called Goexit")
	}
}
