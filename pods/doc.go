// Package pods registers and unregisters pods with the data plane: a pod
// record in the pinned pod map, an endpoint per pod address, and the cgroup
// attachments of the pod's containers. The CNI plugin, the watcher and the
// OCI hook all go through it, so each of them can undo what another did,
// and each holds the pin directory's writer lock (Lock) across a change:
// they run in different processes at once.
package pods
