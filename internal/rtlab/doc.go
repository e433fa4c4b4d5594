// Package rtlab runs a real container runtime for Patu's end-to-end tests,
// the demo and the benchmarks: containerd with its CRI plugin, runc, the
// reference CNI plugins (bridge + host-local, optionally followed by chained
// plugins such as Patu's), and two locally built images, all offline.
//
//	netns patu-<prefix>                     /run/patu-rtlab/<prefix>/
//	  containerd --config …                    containerd/{config.toml,root,state,runc,s}
//	  <prefix>br0  10.x.y.1/24                 containerd.sock  (gRPC: CRI, ctr)
//	   ├─ veth… ══ eth0 in pod netns (.2)      containerd.log   cni/{net.d,bin,ipam}
//	   └─ veth… ══ eth0 in pod netns (.3)      crictl.yaml      pods/<uid>/ (container logs)
//
// Two flavors are supported: "1.6", Debian's containerd 1.6 from
// /usr/bin, and "2", containerd v2.4.2 installed into the tools directory by
// hack/e2e-deps.sh. Both serve CRI v1 on the same socket as the containerd
// API.
//
// containerd runs inside its own network namespace, so the bridge and the
// host ends of the pods' veths never touch the caller's namespace; unix
// sockets are path-based, so the CRI and containerd APIs are reachable from
// anywhere. Only CRI streaming (crictl exec/attach) listens on 127.0.0.1 of
// that namespace, which is why Lab.Crictl runs crictl there. Exec uses
// ExecSync instead, which needs no stream and runs the command through runc,
// in the container's cgroup (BPF programs attached to cgroups see it).
//
// The configuration works around what the test machines lack: no systemd
// (cgroupfs driver), no CAP_SYS_RESOURCE (restrict_oom_score_adj), and the
// 1.6 and 2.x shims must not be mixed (each daemon gets its own shim first in
// PATH). Everything a lab writes lives under its directory, except what the
// runtimes do not let us move: libcni's cache in /var/lib/cni/results, the
// 1.6 shim sockets in /run/containerd/s and the containers' cgroups. Close
// removes all of it, also after containerd was killed with SIGKILL, and Sweep
// does the same for a lab whose process died before it could call Close.
//
// Images are single-layer OCI tarballs built in Go, cached by content under
// the tools directory and imported with the flavor's ctr: a tiny static pause
// binary (built once with the go command), and a workload image holding
// busybox-static plus files the caller adds (Config.ImageFiles).
package rtlab
