// Package k8slab runs a single-node Kubernetes, shaped like a K3s server,
// for Patu's node tier (test/k8s) and its demo: kine with SQLite, the
// upstream kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
// and kube-proxy (iptables or nftables mode) built by hack/k8s-deps.sh,
// containerd 2.x + runc from hack/e2e-deps.sh, and certificates and
// kubeconfigs generated here.
//
//	netns pk8s-<name>  (node0 10.44.0.1, default route; pods on cni0 10.42.0.0/24)
//	mount namespace    BaseDir/<name>/ns/mnt, private, where every component runs:
//	  /run       = BaseDir/<name>/root/run      /run/k3s/containerd/containerd.sock, /run/netns
//	  /var/lib   = BaseDir/<name>/root/var/lib  rancher/k3s/agent/etc/cni/net.d, rancher/k3s/data/cni,
//	                                            rancher/k3s/agent/containerd, kubelet, cni
//	  /var/log   = BaseDir/<name>/root/var/log  pods' logs
//	  /sys/fs/bpf  a bpffs of its own
//	  /proc/sys/{kernel,vm}/… the sysctls kubelet sets: bind mounts of private files
//	cgroups /pk8s-<name>/daemons (the components, shims) and kubelet's
//	  cgroupRoot /pk8s-<name> (kubepods…)
//
// The K3s paths exist only inside the node's mount namespace, so nothing is
// written to the host's /run, /var/lib, /var/log or sysctls; the host sees
// them under BaseDir/<name>/root. Close kills the whole cgroup tree at once
// (cgroup.kill), which takes the components, the shims and the containers,
// then drops the namespaces and the directory; Sweep does the same for a
// node whose test process died, and Start sweeps first.
package k8slab
