package cri

import (
	"context"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/runtime"
)

// criEvent builds a GetContainerEvents message the way containerd 2.x
// does: every event carries the status of the container's sandbox.
func criEvent(id string, typ runtimeapi.ContainerEventType, at time.Time, sandbox string) *runtimeapi.ContainerEventResponse {
	ev := &runtimeapi.ContainerEventResponse{ContainerId: id, ContainerEventType: typ, CreatedAt: at.UnixNano()}
	if sandbox != "" {
		ev.PodSandboxStatus = &runtimeapi.PodSandboxStatus{
			Id:       sandbox,
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "smoke-a", Namespace: "default", Uid: "uid-smoke-a"},
			State:    runtimeapi.PodSandboxState_SANDBOX_READY,
			Network:  &runtimeapi.PodSandboxNetworkStatus{Ip: "10.203.1.2"},
		}
		ev.ContainersStatuses = []*runtimeapi.ContainerStatus{{Id: id, State: runtimeapi.ContainerState_CONTAINER_RUNNING}}
	}
	return ev
}

func TestWatchEvents(t *testing.T) {
	t0 := time.Date(2025, 11, 26, 23, 44, 23, 808586630, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	const sb, ctr = "7c95e43f025c", "81884dc01360"
	// The sequence containerd 2.4.2 sent for runp, create, start, stopp,
	// rmp, plus what the client must cope with.
	sent := []*runtimeapi.ContainerEventResponse{
		criEvent(sb, runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, at(0), sb),
		criEvent(sb, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, at(1), sb),
		criEvent(ctr, runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, at(100), sb),
		criEvent(ctr, runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, at(300), sb),
		criEvent(ctr, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, at(1000), sb),
		criEvent(sb, runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, at(1200), sb),
		criEvent(ctr, runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, at(1600), sb),
		criEvent(sb, runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, at(1700), sb),
		// containerd sends a nil sandbox status when it cannot get one
		criEvent("orphan", runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, at(1800), ""),
		// an event type from a newer CRI, and an event without an id
		criEvent(ctr, runtimeapi.ContainerEventType(17), at(1900), sb),
		criEvent("", runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, at(2000), sb),
	}
	ev := func(k runtime.EventKind, id, sandbox string, ms int) runtime.Event {
		return runtime.Event{Kind: k, ID: id, SandboxID: sandbox, Time: at(ms), Source: runtime.SourceCRI}
	}
	want := []runtime.Event{
		ev(runtime.SandboxCreated, sb, sb, 0),
		ev(runtime.SandboxStarted, sb, sb, 1),
		ev(runtime.ContainerCreated, ctr, sb, 100),
		ev(runtime.ContainerStarted, ctr, sb, 300),
		ev(runtime.ContainerStopped, ctr, sb, 1000),
		ev(runtime.SandboxStopped, sb, sb, 1200),
		ev(runtime.ContainerDeleted, ctr, sb, 1600),
		ev(runtime.SandboxDeleted, sb, sb, 1700),
		ev(runtime.Deleted, "orphan", "", 1800),
	}

	f := &fakeRuntime{events: make(chan *runtimeapi.ContainerEventResponse, len(sent))}
	for _, e := range sent {
		f.events <- e
	}
	close(f.events) // the runtime ends the stream after these
	sock, _ := serve(t, f)
	var got []runtime.Event
	err := dial(t, sock).WatchEvents(context.Background(), func(e runtime.Event) { got = append(got, e) })
	if err == nil || errors.Is(err, runtime.ErrUnsupported) || !errors.Is(err, io.EOF) {
		t.Errorf("WatchEvents after the runtime closed the stream = %v, want an EOF error", err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d:\n%+v", len(got), len(want), got)
	}
	for i := range want {
		if !got[i].Time.Equal(want[i].Time) {
			t.Errorf("event %d: time %v, want %v", i, got[i].Time, want[i].Time)
		}
		got[i].Time = want[i].Time
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

func TestWatchEventsEnd(t *testing.T) {
	tests := []struct {
		name        string
		events      bool                                         // false: GetContainerEvents is Unimplemented
		disabled    bool                                         // the runtime ends the stream at once, cleanly
		end         func(cancel context.CancelFunc, stop func()) // after the subscription is up
		timeout     time.Duration
		unsupported bool
		want        error // errors.Is target, nil = any error
	}{
		{name: "unimplemented, as on containerd 1.6", unsupported: true, want: runtime.ErrUnsupported},
		// CRI-O with enable_pod_events = false (its default).
		{name: "ended at once, as on CRI-O without pod events", events: true, disabled: true, unsupported: true, want: runtime.ErrUnsupported},
		{name: "runtime stops", events: true, end: func(_ context.CancelFunc, stop func()) { stop() }},
		{name: "caller cancels", events: true, end: func(cancel context.CancelFunc, _ func()) { cancel() }, want: context.Canceled},
		// The deadline must come back as the caller's, not as the server's
		// error for a deadline gRPC would otherwise propagate to it.
		{name: "caller deadline", events: true, timeout: 200 * time.Millisecond, want: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeRuntime{}
			if tt.events {
				f.events = make(chan *runtimeapi.ContainerEventResponse)
				f.subscribed = make(chan struct{})
				if tt.disabled {
					close(f.events)
				}
			}
			sock, srv := serve(t, f)
			c := dial(t, sock)
			ctx, cancel := context.WithCancel(context.Background())
			if tt.timeout > 0 {
				ctx, cancel = context.WithTimeout(context.Background(), tt.timeout)
			}
			defer cancel()
			if tt.end != nil {
				go func() {
					<-f.subscribed
					tt.end(cancel, srv.Stop)
				}()
			}
			done := make(chan error, 1)
			go func() { done <- c.WatchEvents(ctx, func(runtime.Event) { t.Error("unexpected event") }) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("WatchEvents did not return")
			}
			if err == nil {
				t.Fatal("WatchEvents returned nil")
			}
			if errors.Is(err, runtime.ErrUnsupported) != tt.unsupported {
				t.Errorf("errors.Is(%v, ErrUnsupported) = %v", err, !tt.unsupported)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("WatchEvents = %v, want %v", err, tt.want)
			}
			if tt.want == nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
				t.Errorf("WatchEvents = %v: a broken stream must not look like the caller's cancellation", err)
			}
		})
	}
}
