// Package freshns runs a test the way a fresh machine would see it: in a
// private mount namespace in which nothing is mounted at /sys/fs/bpf, the
// state of a host that has never mounted bpffs (no systemd to do it at
// boot). What the test mounts there stays in that namespace, so it cannot
// disturb other tests, and goes when the test's process ends.
package freshns
