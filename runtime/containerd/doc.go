// Package containerd subscribes to containerd's event bus, the trigger
// source for containerd releases whose CRI GetContainerEvents is missing
// (1.6: Unimplemented) or unfit to share (1.7: one queue drained by every
// subscriber, see runtime/cri). It reports task and container life-cycle
// events of one containerd namespace (k8s.io by default) as runtime.Events.
//
// The package uses containerd's own API module,
// github.com/containerd/containerd/api: the generated Events, Containers and
// Version clients over google.golang.org/grpc (runtime/internal/grpcdial),
// and typeurl to unpack the event payloads of each envelope. It does not
// link containerd's client package, which would bring the whole containerd
// module for the same three calls. The API has not changed on the wire since
// containerd 1.0, so one client serves 1.6, 1.7 and 2.x; the tests replay
// envelopes recorded from real containerd 1.6.20 and 2.4.2 and serve
// fixtures written by the api module's own code (testdata/gen) over a real
// gRPC server.
//
// An event names only a container id. Whether that id is a pod sandbox or
// an application container is in the container record's labels
// (io.cri-containerd.kind), so the first event for an id costs one
// Containers.Get; the answer is cached for the life of the subscription,
// which is how /containers/delete, sent after the record is gone, can still
// be classified. Containers without the CRI label (made with ctr, say) are
// not reported.
package containerd
