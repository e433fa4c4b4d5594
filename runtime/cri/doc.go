// Package cri is a small client for the Kubernetes Container Runtime
// Interface (CRI v1) over the runtime's unix socket: the pod sandboxes and
// containers that exist, where a sandbox's network namespace and cgroup are,
// and the runtime's container event stream.
//
// It asks only for what Patu's watcher reconciles on. Two things are not in
// the CRI proper and are read from the runtime's verbose status, a JSON
// document under the "info" key whose shape the runtime chooses: the
// sandbox's pid, network namespace and cgroup (SandboxInfo), and a
// container's pid (ContainerPid). containerd 1.6 and 2.x agree on the fields
// used here (testdata/ holds documents recorded from 1.6.20 and 2.4.2);
// CRI-O uses the same "info" key with "pid" and "runtimeSpec", not checked
// against a real CRI-O yet.
//
// The client is k8s.io/cri-api's generated RuntimeServiceClient over
// google.golang.org/grpc (runtime/internal/grpcdial): the same code kubelet
// uses, so new CRI fields and protocol fixes come with a version bump. Its
// tests run it against a grpc-go server built from that generated code.
//
// Listing does not return IPs, so Sandboxes asks for the status of every
// ready sandbox: one extra call per pod, which is what kubelet does too.
package cri
