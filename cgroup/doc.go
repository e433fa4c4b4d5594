// Package cgroup finds the cgroup v2 hierarchy and works with its
// directories: the id BPF programs see for a cgroup, checks that a path is
// on cgroup2, and removal of a cgroup that may still hold processes.
//
// The mount point is never assumed: pure cgroup v2 systems mount it at
// /sys/fs/cgroup, hybrid ones (systemd's "unified" layout) at
// /sys/fs/cgroup/unified, and containers anywhere. Mount2 reads it from
// /proc/self/mountinfo.
package cgroup
