package cgroup

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/patu-dev/patu/internal/mountinfo"
)

// ErrNoCgroup2 is returned by Mount2 when no cgroup v2 file system is
// mounted.
var ErrNoCgroup2 = errors.New("no cgroup v2 mount found in /proc/self/mountinfo: " +
	"mount one, e.g. mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified")

// Mount2 returns the mount point of the cgroup v2 hierarchy, or an error
// wrapping ErrNoCgroup2 when there is none.
func Mount2() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

// parseMountinfo returns the first cgroup2 mount point in r, a
// /proc/PID/mountinfo text. A mount of the hierarchy's root is preferred
// over a bind mount of a subtree (containers often have those).
func parseMountinfo(r io.Reader) (string, error) {
	mounts, err := mountinfo.Parse(r)
	if err != nil {
		return "", err
	}
	sub := ""
	for _, m := range mounts {
		if m.FSType != "cgroup2" {
			continue
		}
		if m.Root == "/" {
			return m.Point, nil
		}
		if sub == "" {
			sub = m.Point
		}
	}
	if sub != "" {
		return sub, nil
	}
	return "", ErrNoCgroup2
}

// IsCgroup2Dir returns nil when dir is a directory on a cgroup v2 file
// system, and an error saying what it is otherwise.
func IsCgroup2Dir(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		kind := fmt.Sprintf("file system magic %#x", st.Type)
		switch st.Type {
		case unix.CGROUP_SUPER_MAGIC:
			kind = "cgroup v1"
		case unix.TMPFS_MAGIC:
			kind = "tmpfs"
		case unix.SYSFS_MAGIC:
			kind = "sysfs"
		}
		hint := "use a directory under the cgroup2 mount"
		if mnt, err := Mount2(); err == nil {
			hint += " (" + mnt + ")"
		}
		return fmt.Errorf("%s is on %s, not cgroup v2: %s", dir, kind, hint)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("cgroup %s: not a directory", dir)
	}
	return nil
}

// ID returns the id of the cgroup v2 directory dir, the value
// bpf_get_current_cgroup_id() reports for its processes: the inode number
// of the directory (kernfs node id).
func ID(dir string) (uint64, error) {
	if err := IsCgroup2Dir(dir); err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	return st.Ino, nil
}

// removeTimeout bounds how long Remove retries a busy cgroup: processes that
// were just moved out or killed take a moment to leave it.
const removeTimeout = 2 * time.Second

// Remove removes the cgroup v2 directory dir and any child cgroups below
// it. Processes still in them are moved to dir's parent first. A missing
// dir is not an error.
func Remove(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := IsCgroup2Dir(dir); err != nil {
		return fmt.Errorf("remove cgroup: %w", err)
	}
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	deadline := time.Now().Add(removeTimeout)
	for {
		// Moved to the parent of dir, not of each child: within the tree a
		// cgroup with controllers enabled for its children may hold no
		// processes ("no internal processes"), and the tree goes anyway.
		moveErr := moveProcs(dir, parent)
		err := removeTree(dir)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, errors.Join(err, moveErr))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// moveProcs writes every process of the tree at dir into the cgroup to.
func moveProcs(dir, to string) error {
	var errs []error
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		pids, err := Procs(path)
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		for _, pid := range pids {
			// One pid per write: cgroup.procs takes one at a time.
			err := os.WriteFile(filepath.Join(to, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
			if err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("move pid %d from %s to %s: %w", pid, path, to, err))
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeTree removes the cgroup directories below dir, deepest first, then
// dir. A cgroup directory is removed with rmdir alone: its files go with it.
func removeTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("rmdir %s: %w", dir, err)
	}
	return nil
}

// Procs returns the ids of the processes in the cgroup dir itself (not in
// its children), from its cgroup.procs file.
func Procs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("read processes of cgroup %s: %w", dir, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse %s/cgroup.procs: %w", dir, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}
