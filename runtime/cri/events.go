package cri

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/runtime"
)

// WatchEvents subscribes to the runtime's container events
// (GetContainerEvents) and calls fn for each, in order, on the calling
// goroutine. It blocks until the stream ends and always returns an error:
//   - ctx.Err() when ctx is done;
//   - one wrapping runtime.ErrUnsupported when the runtime does not
//     implement the call (containerd 1.6): use runtime/containerd; or when
//     it ends the stream cleanly before sending any event, which is how
//     CRI-O answers while its enable_pod_events is false;
//   - any other error when the stream broke, typically because the runtime
//     restarted: reconnect after a backoff and resync.
//
// containerd 2.x queues events while nobody is subscribed and delivers them
// to the next subscriber, so the first events can be stale (see Event.Time).
//
// Do not use it on containerd 1.7 (LegacyContainerd reports 1.x): there
// every event goes to exactly one of the subscribers, so Patu would take
// events away from kubelet's evented PLEG; and while nobody listens the
// first 1000 events are kept and later ones dropped. Use
// runtime/containerd there.
func (c *Client) WatchEvents(ctx context.Context, fn func(runtime.Event)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream when fn's caller stops reading
	stream, err := c.rs.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		return streamErr(ctx, err)
	}
	got := false
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) && !got && ctx.Err() == nil {
			return fmt.Errorf("cri container events: %w: the runtime ended the stream at once, without an event "+
				"(CRI-O sends events only with enable_pod_events = true in crio.conf)", runtime.ErrUnsupported)
		}
		if err != nil {
			return streamErr(ctx, err)
		}
		got = true
		if ev, ok := toEvent(e); ok {
			fn(ev)
		}
	}
}

func streamErr(ctx context.Context, err error) error {
	return runtime.StreamError(ctx, "cri container events", "runtime", err, status.Code(err) == codes.Unimplemented)
}

// toEvent converts a CRI event. Sandbox events are the ones whose container
// id is the sandbox's own id (containerd sends the sandbox status with every
// event); without a sandbox status the object's kind is unknown.
func toEvent(e *runtimeapi.ContainerEventResponse) (runtime.Event, bool) {
	var action runtime.EventKind
	switch e.GetContainerEventType() {
	case runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT:
		action = runtime.Created
	case runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT:
		action = runtime.Started
	case runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT:
		action = runtime.Stopped
	case runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT:
		action = runtime.Deleted
	default:
		return runtime.Event{}, false
	}
	if e.GetContainerId() == "" {
		return runtime.Event{}, false
	}
	ev := runtime.Event{
		Kind:   action,
		ID:     e.GetContainerId(),
		Time:   nanos(e.GetCreatedAt()),
		Source: runtime.SourceCRI,
	}
	if sb := e.GetPodSandboxStatus().GetId(); sb != "" {
		ev.SandboxID = sb
		if sb == ev.ID {
			ev.Kind |= runtime.OnSandbox
		} else {
			ev.Kind |= runtime.OnContainer
		}
	}
	return ev, true
}
