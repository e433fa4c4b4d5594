// Package containerd subscribes to containerd's event bus, the trigger
// source for containerd releases whose CRI GetContainerEvents is missing
// (1.6: Unimplemented) or unfit to share (1.7: one queue drained by every
// subscriber, see runtime/cri). It reports task and container life-cycle
// events of one containerd namespace (k8s.io by default) as runtime.Events.
//
// The package speaks containerd's gRPC API through runtime/internal/grpcunix
// and encodes the handful of messages it needs by hand (wire.go): the
// Events, Containers and Version services and the task/container event
// payloads. The generated packages of github.com/containerd/containerd/api
// would pull in grpc-go, ttrpc, typeurl, image-spec and logrus for a few
// fields. The field numbers are those of the api module's .proto files; the
// tests decode envelopes produced by the api module's own generated code
// and typeurl (testdata/gen) and by real containerd 1.6.20 and 2.4.2, served
// by a grpc-go server.
//
// An event names only a container id. Whether that id is a pod sandbox or
// an application container is in the container record's labels
// (io.cri-containerd.kind), so the first event for an id costs one
// Containers.Get; the answer is cached for the life of the subscription,
// which is how /containers/delete, sent after the record is gone, can still
// be classified. Containers without the CRI label (made with ctr, say) are
// not reported.
package containerd
