package cri

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/internal/grpcunix"
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
	stream, err := c.conn.NewStream(ctx, methodGetContainerEvents, nil)
	if err != nil {
		return streamErr(ctx, err)
	}
	defer stream.Close()
	got := false
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) && !got && ctx.Err() == nil {
			return fmt.Errorf("cri container events: %w: the runtime ended the stream at once, without an event "+
				"(CRI-O sends events only with enable_pod_events = true in crio.conf)", runtime.ErrUnsupported)
		}
		if err != nil {
			return streamErr(ctx, err)
		}
		got = true
		e, err := decodeContainerEvent(msg)
		if err != nil {
			// One bad message should not cut the trigger stream.
			continue
		}
		if ev, ok := toEvent(e); ok {
			fn(ev)
		}
	}
}

func streamErr(ctx context.Context, err error) error {
	return runtime.StreamError(ctx, "cri container events", "runtime", err, grpcunix.IsUnimplemented(err))
}

// toEvent converts a CRI event. Sandbox events are the ones whose container
// id is the sandbox's own id (containerd sends the sandbox status with every
// event); without a sandbox status the object's kind is unknown.
func toEvent(e containerEvent) (runtime.Event, bool) {
	var action runtime.EventKind
	switch e.Type {
	case eventCreated:
		action = runtime.Created
	case eventStarted:
		action = runtime.Started
	case eventStopped:
		action = runtime.Stopped
	case eventDeleted:
		action = runtime.Deleted
	default:
		return runtime.Event{}, false
	}
	if e.ContainerID == "" {
		return runtime.Event{}, false
	}
	ev := runtime.Event{
		Kind:   action,
		ID:     e.ContainerID,
		Time:   nanos(e.CreatedAt),
		Source: runtime.SourceCRI,
	}
	if e.SandboxID != "" {
		ev.SandboxID = e.SandboxID
		if e.SandboxID == ev.ID {
			ev.Kind |= runtime.OnSandbox
		} else {
			ev.Kind |= runtime.OnContainer
		}
	}
	return ev, true
}
