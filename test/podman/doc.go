// Package podman holds Patu's end-to-end tests with real podman and the OCI
// hooks (`patu hook` from a hooks.d directory), no daemon and no CNI
// plugin: Debian's podman 4.3 with netavark, runc and conmon, images built
// locally (internal/rtlab) and loaded with `podman load`.
//
// Every podman command runs with a private configuration under
// /tmp/patu-pm-*: containers.conf (cgroupfs, file events, ulimits the test
// machines allow, hooks_dir, network_config_dir, default subnet
// 10.211.0.0/24), storage.conf (graphroot and runroot there) and the
// hooks.d files, rendered from deploy/podman with the test-built patu and
// the pin directory /sys/fs/bpf/patu-e2e-podman. podman runs inside the
// network namespace patu-pm-e2e (nsenter), so netavark's bridge and
// firewall rules never touch the host's, and every container gets the
// cgroup parent /patu-pm-e2e.
//
// What podman writes elsewhere (/run/netns/netns-*, /run/runc/<id>, the
// IPAM database /run/containers/networks/ipam.db, the blob-info cache under
// /var/lib/containers/cache) is removed when the test ends if the test
// created it, and a run that died is swept by the next one: the tests need
// root (PATU_SKIP_PRIVILEGED=1 skips them) and podman (hack/podman-deps.sh).
package podman
