// Package k8s is Patu's node tier: a real single-node Kubernetes shaped like
// K3s (internal/k8slab: upstream kube-apiserver, controller-manager,
// scheduler, kubelet and kube-proxy, kine with SQLite, containerd 2.x),
// with Patu installed the way users install it, `kubectl apply` of
// deploy/k3s/patu.yaml running the image `make image` builds, imported
// with ctr. The tests drive ordinary manifests (Deployments with
// readiness probes, ClusterIP and NodePort Services, a hostPort) and check
// what Patu promises: every pod registered while it runs and nothing left
// after; pod-to-pod and pod-to-Service traffic intact and carried by the
// local packet path with no Service information given to Patu; the
// opt-out annotation; rolling updates, deletions, scale 0 → 50 → 0;
// kubelet and containerd restarts and a kill -9 of the daemon during
// traffic; and `kubectl delete` leaving the node as it was.
//
// They need root; PATU_SKIP_PRIVILEGED=1 skips them. The Kubernetes
// binaries come from hack/k8s-deps.sh (make test-deps).
package k8s
