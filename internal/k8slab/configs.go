package k8slab

import (
	"fmt"
	"strconv"
)

// Paths inside the node, as K3s has them (docs.k3s.io: advanced, "Using a
// custom CNI": conf in agent/etc/cni/net.d, plugins in data/cni since the
// static CNI bin dir; containerd under agent/containerd with its socket in
// /run/k3s/containerd).
const (
	ContainerdSock = "/run/k3s/containerd/containerd.sock"
	CNIConfDir     = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
	CNIBinDir      = "/var/lib/rancher/k3s/data/cni"
	containerdRoot = "/var/lib/rancher/k3s/agent/containerd"
	containerdConf = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
	containerdRun  = "/run/k3s/containerd"
	kubeletRoot    = "/var/lib/kubelet"
)

// Addresses of the node: every node has the same ones, each in its own
// network namespace.
const (
	NodeIP      = "10.44.0.1"
	PodCIDR     = "10.42.0.0/24"
	ClusterCIDR = "10.42.0.0/16"
	ServiceCIDR = "10.43.0.0/16"
	// BridgeConflist is the CNI configuration the node starts with, as a
	// K3s node with its own bridge network (--flannel-backend=none) has:
	// bridge + host-local + portmap.
	BridgeConflist = "10-bridge.conflist"
)

func q(s string) string { return strconv.Quote(s) }

// containerdConfig is containerd 2.x's configuration (schema version 4)
// with K3s's paths; the pause image is rtlab's, imported by Start.
func containerdConfig(runc, pause string) string {
	return fmt.Sprintf(`version = 4
root = %s
state = %s
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = %s
  [plugins.'io.containerd.server.v1.ttrpc']
    address = %s
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %s
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    # No CAP_SYS_RESOURCE on the test machines.
    restrict_oom_score_adj = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %s
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%s]
      conf_dir = %s
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
`, q(containerdRoot), q(containerdRun), q(ContainerdSock), q(ContainerdSock+".ttrpc"), q(pause), q(runc), q(CNIBinDir), q(CNIConfDir))
}

// bridgeConflist is the node's own network before Patu: K3s's cni0 bridge
// with hairpin mode (pods reaching themselves through a Service), portmap
// for hostPorts.
func bridgeConflist() string {
	return `{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "` + PodCIDR + `"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}
`
}

// kubeletConfig is kubelet's configuration: cgroupfs under the node's own
// cgroup root, no eviction on this shared machine's disk, no DNS.
func kubeletConfig(cgroupRoot, caFile string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://%s
failSwapOn: false
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
address: 0.0.0.0
port: 10250
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
maxPods: 110
protectKernelDefaults: false
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
shutdownGracePeriod: 0s
`, q(caFile), q(cgroupRoot), ContainerdSock)
}

// kubeProxyConfig is kube-proxy's configuration. Conntrack settings are
// zero so it leaves the host-wide nf_conntrack_max and timeouts alone.
func kubeProxyConfig(mode, kubeconfig, hostname string) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %s}
mode: %s
clusterCIDR: %s
hostnameOverride: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, q(kubeconfig), mode, ClusterCIDR, hostname)
}
