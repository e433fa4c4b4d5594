package rtlab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/cgroup"
	"github.com/patu-dev/patu/internal/mountinfo"
	"github.com/patu-dev/patu/netns"
)

// cniCacheDir is libcni's result cache. containerd does not let us move it.
const cniCacheDir = "/var/lib/cni/results"

// shimSocketDir16 is where containerd 1.6 puts shim sockets, whatever its
// configuration says.
const shimSocketDir16 = "/run/containerd/s"

// killTimeout bounds the wait for killed processes to disappear.
const killTimeout = 5 * time.Second

// Close removes the lab: it stops and removes the pods through CRI while
// containerd runs, stops containerd, then removes whatever is left, which
// is everything after a containerd crash or Kill: this lab's stray
// containerd and shim processes, containers in its runc root, mounts under
// its directory, its network namespace, its libcni cache entries, the
// cgroups its pods had and the empty directories it caused, and finally the
// directory. Calling it again is a no-op.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	d, rt := l.d, l.rt
	l.mu.Unlock()

	if d != nil && d.running() && rt != nil {
		l.removePods(rt)
	}
	var errs []error
	if err := l.stopDaemon(context.Background(), unix.SIGTERM); err != nil {
		errs = append(errs, err)
	}
	l.mu.Lock()
	if l.conn != nil {
		l.conn.Close()
		l.conn = nil
	}
	known := make([]string, 0, len(l.seenIDs))
	for id := range l.seenIDs {
		known = append(known, id)
	}
	l.mu.Unlock()
	if err := teardown(l.l, known, l.nsPath != ""); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("rtlab %s: close: %w", l.cfg.Prefix, err)
	}
	return nil
}

// removePods stops and removes every pod through CRI, so CNI DEL runs for
// each. Failures are only logged: the teardown that follows removes what
// they leave behind.
func (l *Lab) removePods(rt runtimeapi.RuntimeServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		l.log.Warn("list pods", "error", err)
		return
	}
	for _, p := range resp.GetItems() {
		if err := l.RemovePod(ctx, p.GetId()); err != nil {
			l.log.Warn("remove pod", "sandbox", p.GetId(), "error", err)
		}
	}
}

// Sweep removes what a lab with this prefix left behind when its process
// died before Close: containerd and shim processes, containers, mounts,
// network namespace, libcni cache entries, cgroups and the lab directory.
// Call it before Start in tests (TestMain or the test itself). It must not
// run while a lab with the prefix is in use. Nothing left is not an error.
func Sweep(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("rtlab sweep: invalid prefix %q", prefix)
	}
	if err := teardown(newLayout(prefix), nil, true); err != nil {
		return fmt.Errorf("rtlab sweep %s: %w", prefix, err)
	}
	return nil
}

// teardown removes a lab's leftovers, in an order where each step frees
// what the next one needs: processes hold mounts and namespaces, mounts
// hold the directory. known adds container and sandbox ids to those found
// on disk.
func teardown(l layout, known []string, deleteNetns bool) error {
	var errs []error
	ids := labIDs(l, known)
	// containerd (a lost daemon: Close stopped its own already), then the
	// containers, then their shims. Killing a shim first would leave runc
	// containers no one reaps.
	if err := killProcs(func(argv []string) bool {
		return filepath.Base(argv[0]) == "containerd" && slices.Contains(argv, l.config)
	}); err != nil {
		errs = append(errs, err)
	}
	if err := runcDeleteAll(l); err != nil {
		errs = append(errs, err)
	}
	if err := killProcs(func(argv []string) bool {
		return strings.HasPrefix(filepath.Base(argv[0]), "containerd-shim") && slices.Contains(argv, l.sock)
	}); err != nil {
		errs = append(errs, err)
	}
	if err := removeShimSockets(l, ids); err != nil {
		errs = append(errs, err)
	}
	if err := killCgroups(l, ids); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(l.dir); err != nil {
		errs = append(errs, err)
	}
	if deleteNetns {
		if err := netns.Delete(l.netnsName); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCNICache(l, ids); err != nil {
		errs = append(errs, err)
	}
	if mnts, err := cgroupMounts(); err != nil {
		errs = append(errs, err)
	} else {
		for _, m := range mnts {
			for _, id := range ids {
				unix.Rmdir(filepath.Join(m, "k8s.io", id))
			}
			removeEmptyTree(filepath.Join(m, l.cgroupRoot))
			if _, err := os.Stat(filepath.Join(m, l.cgroupRoot)); err == nil {
				errs = append(errs, fmt.Errorf("cgroup %s still in use", filepath.Join(m, l.cgroupRoot)))
			}
		}
	}
	removeIfEmpty(l)
	if err := removeDir(l.dir); err != nil {
		errs = append(errs, err)
	}
	// The base directory goes when the last lab does.
	unix.Rmdir(BaseDir)
	return errors.Join(errs...)
}

var idRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// labIDs returns the ids of the lab's sandboxes and containers: known, plus
// those in the runtime's directories, which outlive a crashed process.
func labIDs(l layout, known []string) []string {
	seen := map[string]bool{}
	for _, id := range known {
		seen[id] = true
	}
	for _, d := range []string{
		filepath.Join(l.runcRoot, "k8s.io"),
		filepath.Join(l.root, "io.containerd.grpc.v1.cri", "sandboxes"),
		filepath.Join(l.root, "io.containerd.grpc.v1.cri", "containers"),
		filepath.Join(l.stateDir, "io.containerd.grpc.v1.cri", "sandboxes"),
		filepath.Join(l.stateDir, "io.containerd.grpc.v1.cri", "containers"),
		filepath.Join(l.stateDir, "io.containerd.runtime.v2.task", "k8s.io"),
	} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if idRE.MatchString(e.Name()) {
				seen[e.Name()] = true
			}
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// killProcs SIGKILLs every process whose argv match accepts and waits
// until they are gone. Processes are found by their arguments because those
// name this lab's unique config file or socket; their pids are not stored
// anywhere a crashed run could have left them.
func killProcs(match func(argv []string) bool) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		argv := procArgs(pid)
		if len(argv) > 0 && match(argv) {
			pids = append(pids, pid)
		}
	}
	var errs []error
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
		}
	}
	deadline := time.Now().Add(killTimeout)
	for _, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("process %d (%q) alive %s after SIGKILL", pid, procArgs(pid), killTimeout))
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// procArgs returns the argv of a process, nil when it is gone, a zombie or
// a kernel thread.
func procArgs(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// alive reports whether pid still runs. A zombie does not: it holds no
// mounts or namespaces, and its reaping is its parent's business.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X')
}

// runcDeleteAll force-deletes every container in the lab's runc root:
// after a containerd crash they run on, and only runc knows them all.
func runcDeleteAll(l layout) error {
	root := filepath.Join(l.runcRoot, "k8s.io")
	entries, err := os.ReadDir(root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("list runc containers: %w", err)
	}
	if len(entries) == 0 {
		return nil
	}
	runc := "/usr/sbin/runc"
	if !isExecutable(runc) {
		if runc, err = exec.LookPath("runc"); err != nil {
			return fmt.Errorf("%d containers left in %s, but runc not found", len(entries), root)
		}
	}
	var errs []error
	for _, e := range entries {
		out, err := exec.Command(runc, "--root", root, "delete", "-f", e.Name()).CombinedOutput()
		if _, serr := os.Stat(filepath.Join(root, e.Name())); err != nil && serr == nil {
			errs = append(errs, fmt.Errorf("runc delete -f %s: %w: %s", e.Name(), err, bytes.TrimSpace(out)))
		}
	}
	return errors.Join(errs...)
}

// removeShimSockets removes the sockets of 1.6 shims, which a shim killed
// with SIGKILL leaves behind. 1.6 names them sha256(<containerd socket>/
// <namespace>/<shim id>), the shim id being the sandbox id. (2.x puts them
// in the lab directory.)
func removeShimSockets(l layout, ids []string) error {
	var errs []error
	for _, id := range ids {
		sum := sha256.Sum256([]byte(filepath.Join(l.sock, "k8s.io", id)))
		p := filepath.Join(shimSocketDir16, hex.EncodeToString(sum[:]))
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove shim socket: %w", err))
		}
	}
	return errors.Join(errs...)
}

// killCgroups kills what is still running in the lab's pod cgroups and in
// the cgroups of its containers (cgroup v2 cgroup.kill covers a subtree),
// and waits until they are empty.
func killCgroups(l layout, ids []string) error {
	mnt, err := cgroup.Mount2()
	if errors.Is(err, cgroup.ErrNoCgroup2) {
		return nil // runc delete -f was all there was to do
	}
	if err != nil {
		return err
	}
	dirs := []string{filepath.Join(mnt, l.cgroupRoot)}
	for _, id := range ids {
		dirs = append(dirs, filepath.Join(mnt, "k8s.io", id))
	}
	var errs []error
	for _, dir := range dirs {
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		populated, err := isPopulated(dir)
		if err != nil || !populated {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
			errs = append(errs, fmt.Errorf("kill cgroup %s: %w", dir, err))
			continue
		}
		deadline := time.Now().Add(killTimeout)
		for {
			if p, err := isPopulated(dir); err != nil || !p {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("cgroup %s still populated %s after cgroup.kill", dir, killTimeout))
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// isPopulated reads the "populated" key of a cgroup v2 cgroup.events.
func isPopulated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("%s/cgroup.events has no populated key", dir)
}

// unmountUnder unmounts every mount at or below dir, deepest first:
// the pods' network namespaces, the containers' root file systems and shm.
// It repeats while unmounting reveals mounts that were stacked below.
func unmountUnder(dir string) error {
	for range 10 {
		mps, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			// MNT_DETACH: a busy mount must not stop the teardown; it goes
			// once its last user does.
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("unmount %s: %w", mp, err)
			}
		}
	}
	mps, _ := mountsUnder(dir)
	return fmt.Errorf("mounts under %s remain: %q", dir, mps)
}

// mountsUnder returns the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	var mps []string
	for _, m := range mounts {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			mps = append(mps, m.Point)
		}
	}
	slices.SortFunc(mps, func(a, b string) int {
		if d := strings.Count(b, "/") - strings.Count(a, "/"); d != 0 {
			return d
		}
		return strings.Compare(b, a)
	})
	return slices.Compact(mps), nil
}

// cgroupMounts returns the mount points of every cgroup hierarchy, v1 and
// v2: runc's cgroupfs driver creates a container's cgroup in all of them.
func cgroupMounts() ([]string, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	var mps []string
	for _, m := range mounts {
		if (m.FSType == "cgroup" || m.FSType == "cgroup2") && m.Root == "/" && !slices.Contains(mps, m.Point) {
			mps = append(mps, m.Point)
		}
	}
	return mps, nil
}

// removeCNICache removes libcni's cached results of the lab's network and
// of its sandboxes' loopback ("cni-loopback-<id>-lo"). containerd removes
// them on a clean CNI DEL; a crash leaves them.
func removeCNICache(l layout, ids []string) error {
	entries, err := os.ReadDir(cniCacheDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("list libcni cache: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		ours := strings.HasPrefix(name, l.netName+"-") ||
			slices.ContainsFunc(ids, func(id string) bool { return strings.Contains(name, "-"+id+"-") })
		if !ours {
			continue
		}
		if err := os.Remove(filepath.Join(cniCacheDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove libcni cache: %w", err))
		}
	}
	return errors.Join(errs...)
}

// removeIfEmpty removes the directories the lab recorded as absent at
// Start, when they are empty now. Another lab may still use them: rmdir
// then fails, which is right.
func removeIfEmpty(l layout) {
	data, err := os.ReadFile(l.stateFile)
	if err != nil {
		return
	}
	var st state
	if json.Unmarshal(data, &st) != nil {
		return
	}
	dirs := slices.Clone(st.RemoveIfEmpty)
	slices.SortFunc(dirs, func(a, b string) int { return len(b) - len(a) })
	for _, d := range dirs {
		unix.Rmdir(d)
	}
}

// removeDir removes the lab directory, but only once nothing is mounted
// below it: RemoveAll would otherwise delete the contents of whatever is
// mounted there.
func removeDir(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(mps) > 0 {
		return fmt.Errorf("not removing %s: still mounted below it: %q", dir, mps)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove lab dir: %w", err)
	}
	return nil
}
