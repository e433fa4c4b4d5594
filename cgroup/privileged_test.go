package cgroup_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/testnet"
)

func TestPrivileged(t *testing.T) {
	testnet.Privileged(t)
	mnt, err := cgroup.Mount2()
	if err != nil {
		t.Fatal(err)
	}
	if err := cgroup.IsCgroup2Dir(mnt); err != nil {
		t.Fatalf("mount point: %v", err)
	}
	for _, dir := range []string{os.TempDir(), "/proc", filepath.Dir(mnt)} {
		if err := cgroup.IsCgroup2Dir(dir); err == nil {
			t.Errorf("IsCgroup2Dir(%s) = nil", dir)
		} else {
			t.Logf("%s: %v", dir, err)
		}
	}
	if _, err := cgroup.ID(os.TempDir()); err == nil {
		t.Errorf("ID of a non-cgroup dir succeeded")
	}

	dir := filepath.Join(mnt, "patu-test-tncg")
	if err := cgroup.Remove(dir); err != nil { // leftover of a crashed run
		t.Fatal(err)
	}
	child := filepath.Join(dir, "child")
	if err := os.MkdirAll(child, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cgroup.Remove(dir) })
	var st syscall.Stat_t
	if err := syscall.Stat(child, &st); err != nil {
		t.Fatal(err)
	}
	id, err := cgroup.ID(child)
	if err != nil {
		t.Fatal(err)
	}
	if id != st.Ino || id == 0 {
		t.Fatalf("id %d, inode %d", id, st.Ino)
	}

	// A process left in the child cgroup must not block Remove.
	fd, err := os.Open(child)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(fd.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pids, err := cgroup.Procs(child)
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("child cgroup holds %v, want [%d]", pids, cmd.Process.Pid)
	}
	if err := cgroup.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s still there: %v", dir, err)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(mnt, filepath.Dir(dir))
	want := "0::" + filepath.Clean("/"+rel)
	if !strings.Contains(string(b), want+"\n") {
		t.Fatalf("process not moved to the parent %q:\n%s", want, b)
	}
	if err := cgroup.Remove(dir); err != nil {
		t.Fatalf("remove missing: %v", err)
	}
}
