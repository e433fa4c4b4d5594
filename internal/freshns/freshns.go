package freshns

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/internal/mountinfo"
)

// BPFFS is where the bpffs a fresh machine lacks would be mounted.
const BPFFS = "/sys/fs/bpf"

// envChild names the top-level test a re-executed test binary is to run
// in the fresh namespace.
const envChild = "PATU_FRESHNS_TEST"

// Run makes the calling top-level test run in a fresh mount namespace. In
// the test process it re-executes the test binary for just this test in a
// new private mount namespace, reports the child's output, fails t if the
// child failed, and returns false: the caller returns. In the child it
// detaches every mount at or below /sys/fs/bpf and returns true: the
// caller goes on with the test's body, in the fresh namespace. Needs root.
func Run(t *testing.T) bool {
	t.Helper()
	name := t.Name()
	if strings.Contains(name, "/") {
		t.Fatalf("freshns.Run(%s): call it from a top-level test", name)
	}
	if os.Getenv(envChild) == name {
		if err := unmountBPFFS(); err != nil {
			t.Fatalf("fresh mount namespace: %v", err)
		}
		return true
	}
	args := []string{"-test.run=^" + name + "$", "-test.v", "-test.count=1"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout="+(time.Until(d)).String())
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), envChild+"="+name)
	// Go makes the new namespace's mounts private (MS_REC|MS_PRIVATE on
	// "/") before it execs the child, so its unmounts never propagate.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	t.Logf("in a private mount namespace without bpffs:\n%s", out)
	if err != nil {
		t.Errorf("%s in a fresh mount namespace: %v", name, err)
	}
	return false
}

// unmountBPFFS detaches every mount at or below BPFFS, deepest first, and
// checks that BPFFS is no bpffs afterwards.
func unmountBPFFS() error {
	mounts, err := mountinfo.Read()
	if err != nil {
		return err
	}
	var points []string
	for _, m := range mounts {
		if m.Point == BPFFS || strings.HasPrefix(m.Point, BPFFS+"/") {
			points = append(points, m.Point)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFS, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", filepath.Clean(BPFFS), err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is still a bpffs after unmounting %q", BPFFS, points)
	}
	return nil
}
