// Package integration holds Patu's privileged integration tests: real
// network namespaces, veths, a bridge, cgroup v2 and BPF, with verifying
// traffic from patu-testpeer. Every scenario runs on the plain bridge path
// too, where it must pass as well: that proves the check can pass without
// Patu and fail with a broken Patu.
package integration
