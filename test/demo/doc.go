// Command demo shows Patu on a real container runtime, the way a user meets
// it: a private containerd with CRI (package internal/rtlab) whose CNI chain
// is bridge followed by Patu's plugin, `patu load` and `patu daemon`, two
// pods started with crictl, a verified transfer between them with Patu's
// counters and the veths' packet counters, and request/response numbers
// with and without Patu, side by side. Everything it creates is removed on
// every exit path, Ctrl-C included, and a crashed run's leftovers are swept
// at the next start.
//
//	sudo make demo                           installs what is missing, then runs it
//	sudo go run ./test/demo [-quick] [-flavor 1.6|2]
//
// The A/B is the same two pods, with the same processes in the same places,
// in the same run: "Patu" is measured while Patu is loaded and the pods are
// registered, "bridge" after `patu unload`, when nothing of Patu is left in
// the kernel and new connections go pod → veth → bridge → veth → pod.
//
// sockperf is not in the pods' image (it is not static), so it runs as a
// host process placed into a pod's network namespace and its container's
// cgroup, where `crictl exec` would put it: Patu's sockops program sees only
// the sockets of processes in a cgroup it is attached to. The cgroup is set
// by clone3(CLONE_INTO_CGROUP), and the fork happens on a thread inside the
// namespace (netns.Do), so the tool is in both from its first instruction.
//
// Everything has names of its own: lab prefix "demo" (network namespace
// patu-demo, /run/patu-rtlab/demo, cgroups under /patu-rtlab-demo), pod
// subnet 10.209.1.0/24, and the pin directory /sys/fs/bpf/patu-demo, so the
// demo never touches a real Patu installation or another lab.
package main
