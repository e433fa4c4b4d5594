// Package hook is the logic of `patu hook`, the OCI runtime hook that
// registers containers with Patu's data plane on hosts without a daemon:
// podman (and CRI-O) run it from a hooks.d file, synchronously, at the
// stages below.
//
//	createRuntime  the container's netns is configured (netavark or CNI ran
//	(or prestart)  first) and its init process exists but has not started
//	               the program: record the container (pods.Register: its
//	               netns, the global addresses inside it, names from its
//	               annotations, opt-out from patu.io/redirect) and attach
//	               sockops to its cgroup (pods.SetCgroups). Its first
//	               connection is covered.
//	poststop       the netns is gone and there is no pid: pods.Unregister
//	               undoes it from the record alone.
//
// One record per container, keyed by the container id, with Source
// bpf.PodFromHook: the watcher never touches such records. Containers that
// share a netns (a podman pod: the infra container and its app containers)
// each hold the netns's addresses; an endpoint goes only with its last
// holder, and it is opted out while any holder is.
//
// Containers on the host network (no netns of their own) and containers
// without addresses (--network none) are not recorded: there is nothing to
// redirect.
//
// Patu is an optimisation on top of a working network, so a failure inside
// Patu (not loaded, no bpffs, a map full, a netns that cannot be read) must
// never stop a container: Run returns it, and the command logs it, counts
// it in a small file (see Failures) and exits 0. Only input that is not
// what a runtime sends (an unknown stage, a malformed state) is refused.
//
// Hooks of concurrent container starts run in parallel; Run serialises the
// map updates of hooks on one pin directory with the directory's writer
// lock (pods.Lock), which patu-cni and the daemon take too, so an address
// that one container releases and the next one takes is never deleted by
// the first one's poststop.
package hook
