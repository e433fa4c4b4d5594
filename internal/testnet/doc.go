// Package testnet builds throwaway pod topologies for Patu's privileged
// tests and benchmarks: a "node" network namespace holding a Linux bridge,
// and pods, each a network namespace on a veth pair to that bridge with its
// own cgroup v2 directory, IPv4 and IPv6.
//
//	node netns (<prefix>-node, cgroup <prefix>-host)
//	  <prefix>-br  10.x.y.1/24  fd00:..::1/64
//	   ├─ <prefix>v0 ══ eth0 in <prefix>-p0 (.2, ::2), cgroup <prefix>-p0
//	   └─ <prefix>v1 ══ eth0 in <prefix>-p1 (.3, ::3), cgroup <prefix>-p1
//
// Nothing is created in the root network namespace, so the only names that
// can collide between instances are the namespace files under /run/netns
// and the cgroup directories; both carry the prefix. Close removes
// everything, and Sweep removes what a crashed run left behind.
//
// Processes started with Pod.Command run in the pod's namespace and cgroup
// from their first instruction. Because os/exec offers no hook to fork from
// a thread of our choice, Command starts the current executable as a small
// shim (see the init function) that enters the namespace with netns.Do and
// execs the real program; the cgroup is set by clone3(CLONE_INTO_CGROUP).
package testnet
