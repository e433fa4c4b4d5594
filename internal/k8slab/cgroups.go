package k8slab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupMounts returns the mount points of every cgroup hierarchy, v1 and
// v2. Test machines may be hybrid (v1 controllers plus an unified v2
// mount): kubelet's cgroupfs driver and runc then use every hierarchy, so
// the node's tree is made, emptied and removed in each.
func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mnts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) >= 3 && (fs[2] == "cgroup" || fs[2] == "cgroup2") {
			mnts = append(mnts, fs[1])
		}
	}
	if len(mnts) == 0 {
		return nil, errors.New("no cgroup hierarchy mounted")
	}
	return mnts, s.Err()
}

// makeCgroups creates /pk8s-<name> (kubelet's cgroupRoot) and
// /pk8s-<name>/daemons (the node's own processes) in every hierarchy. In
// v1 cpuset a cgroup takes no process before it has cpus and mems; in v2
// the controllers must be enabled for kubelet's children.
func (n *Node) makeCgroups() error {
	mnts, err := cgroupMounts()
	if err != nil {
		return err
	}
	rel := "pk8s-" + n.cfg.Name
	for _, m := range mnts {
		root := filepath.Join(m, rel)
		for _, d := range []string{root, filepath.Join(root, "daemons")} {
			if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create cgroup: %w", err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if _, err := os.Stat(filepath.Join(d, f)); err != nil {
					continue
				}
				v, err := os.ReadFile(filepath.Join(filepath.Dir(d), f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), v, 0); err != nil {
					return fmt.Errorf("%s in %s: %w", f, d, err)
				}
			}
			n.daemonCgroups = append(n.daemonCgroups, d)
		}
		if avail, err := os.ReadFile(filepath.Join(root, "cgroup.controllers")); err == nil {
			var ctl []string
			for _, c := range strings.Fields(string(avail)) {
				ctl = append(ctl, "+"+c)
			}
			if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte(strings.Join(ctl, " ")), 0); err != nil {
				return fmt.Errorf("enable controllers in %s: %w", root, err)
			}
		}
	}
	// Only the leaves take processes.
	var leaves []string
	for _, d := range n.daemonCgroups {
		if filepath.Base(d) == "daemons" {
			leaves = append(leaves, d)
		}
	}
	n.daemonCgroups = leaves
	return nil
}

// killCgroups kills every process in the node's cgroup trees until they
// are empty.
func killCgroups(name string) error {
	mnts, err := cgroupMounts()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var pids []int
		for _, m := range mnts {
			filepath.WalkDir(filepath.Join(m, "pk8s-"+name), func(p string, d os.DirEntry, err error) error {
				if err != nil || !d.IsDir() {
					return nil
				}
				b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
						pids = append(pids, pid)
					}
				}
				return nil
			})
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups of node %s: processes %v survive SIGKILL", name, pids)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeCgroups removes the node's cgroup trees, deepest first.
func removeCgroups(name string) error {
	mnts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mnts {
		var dirs []string
		filepath.WalkDir(filepath.Join(m, "pk8s-"+name), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for range 50 { // a killed process leaves its cgroup a moment later
				if err = syscall.Rmdir(dirs[i]); err == nil || errors.Is(err, syscall.ENOENT) || !errors.Is(err, syscall.EBUSY) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}
