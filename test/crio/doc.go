// Package crio is Patu's end-to-end test with a real CRI-O (v1.34.0, built
// from its Go module by hack/crio-deps.sh: Debian 12 has no cri-o package).
//
//	netns patu-crio                           /tmp/crio-lab/
//	  crio --config /tmp/crio-lab/crio.conf      crio.conf, crio.sock, crio.log
//	  registry 127.0.0.1:5000 (in this test)     root/ runroot/ (containers/storage, overlay)
//	  crbr0 10.212.0.1/24                        runc/ (runc --root), run/ns/ (pinned namespaces)
//	   ├─ veth ══ eth0 of pod (.2)               cni/{net.d,bin,ipam}, hooks.d/, pods/
//	   └─ veth ══ eth0 of pod (.3)            cgroups /patu-crio/<pod>/crio-<id>
//	patu daemon / patu hook: pins under /sys/fs/bpf/patu-e2e-crio
//
// What it covers (TestCRIO, one lab for all subtests):
//   - client: Patu's CRI client (runtime/cri) against CRI-O: the runtime's
//     name, the GetContainerEvents stream (enable_pod_events = true), and
//     the verbose status of a pod without a pause process;
//   - hooks: no daemon; CRI-O runs `patu hook` from hooks.d at
//     createRuntime and poststop. Records appear before the program runs,
//     traffic between two pods is redirected, removal leaves nothing;
//   - daemon: the real `patu daemon --events auto`: containerd's API is
//     Unimplemented on CRI-O's socket, so it falls back to CRI events; a pod
//     that ran before it and one started after are registered with their
//     containers' cgroups, traffic is redirected, an opted-out pod
//     (patu.io/redirect: "false") stays on TCP, and a removed pod leaves no
//     record, endpoint or attached cgroup.
//
// TestRecordedInfo needs neither root nor CRI-O: it serves verbose status
// documents recorded from CRI-O 1.34.0 (testdata/) to Patu's CRI client.
//
// What CRI-O does differently from containerd, as seen here:
//   - drop_infra_ctr (default true): a pod whose containers each have their
//     own PID namespace, kubelet's default, has no pause process. Its
//     verbose info is {"runtimeSpec": …} only: no "pid", no "config" (so no
//     cgroup_parent). The netns is a file pinned by pinns under
//     namespaces_dir. The watcher therefore never uses the per-pod cgroup
//     for CRI-O pods and attaches each container's cgroup instead.
//   - Events for runp, create, start, stop, stopp, rm, rmp: STARTED(sandbox)
//     (no CREATED), CREATED, STARTED, STOPPED (container), STOPPED
//     (sandbox), DELETED (container); RemovePodSandbox sends nothing. Every
//     event carries the sandbox status; containersStatuses is empty.
//     Events from CRI-O's start until the first subscription are buffered
//     (up to 1000) and go to the first subscriber; after that, events
//     nobody listens to are dropped (server/container_events.go).
//   - enable_pod_events is false by default. GetContainerEvents then
//     returns at once with no error: Patu sees a clean EOF, not
//     Unimplemented, and reconnects with backoff (up to 30 s) instead of
//     falling back; each reconnect reconciles, so pods are still found.
//   - Containers get the pod's annotations in their OCI spec, so hooks.d
//     "when" conditions and patu.io/redirect work on pod annotations.
//   - Images come only from registries (PullImage takes docker references),
//     so the test serves rtlab's OCI tarballs from a tiny read-only registry
//     inside the lab's netns. CRI-O still writes its blob-info cache to
//     /var/lib/containers/cache, the one path outside /tmp/crio-lab.
//
// What it does not cover:
//   - pods with a pod-level PID namespace (a pause process): runc fails to
//     set the pause process's oom_score_adj of -998 without
//     CAP_SYS_RESOURCE, which this machine lacks, and CRI-O has no
//     restrict_oom_score_adj. The sandbox info would then have "pid" too.
//   - the systemd cgroup manager (no systemd here), CRI-O's own metrics,
//     NRI, and Patu's CNI plugin chained in CRI-O's conflist.
//
// Skips: PATU_SKIP_PRIVILEGED=1 skips TestCRIO; so does a missing CRI-O
// (crio and pinns in ${PATU_TOOLS:-/var/cache/patu-e2e}/crio/bin, or
// PATU_CRIO_DIR; conmon, runc, nsenter, ip), with a message saying how to
// install it, unless PATU_REQUIRE_CRIO=1 makes that a failure. Not being
// root fails TestCRIO. PATU_E2E_LOG=1 prints the CRI-O and daemon logs.
package crio
