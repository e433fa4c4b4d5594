package containerd

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/patu-dev/patu/runtime"
)

// Topics the client subscribes to. /containers/create is left out: a task
// event follows it whenever the container runs, and for a sandbox the
// network is set up before its task exists. /containers/update (1.6 only)
// carries nothing new.
var topics = []string{
	"/tasks/create",
	"/tasks/start",
	"/tasks/exit",
	"/tasks/delete",
	"/containers/delete",
}

// CRI's marks on containerd container records.
const (
	labelKind           = "io.cri-containerd.kind" // "sandbox" or "container"
	annotationSandboxID = "io.kubernetes.cri.sandbox-id"
	kindSandbox         = "sandbox"
	kindContainer       = "container"
)

// maxClassifiedEntries bounds the classifier's cache: entries leave on
// /containers/delete, so only deletes missed while nobody listened pile up.
const maxClassifiedEntries = 1 << 14

// filters returns one filter per topic; containerd ORs the filters given in
// one SubscribeRequest and ANDs the terms inside one filter.
func (c *Client) filters() []string {
	f := make([]string, len(topics))
	for i, t := range topics {
		f[i] = "namespace==" + strconv.Quote(c.ns) + ",topic==" + strconv.Quote(t)
	}
	return f
}

// WatchEvents subscribes to containerd's task and container events in the
// client's namespace and calls fn for each, in order, on the calling
// goroutine. It blocks until the stream ends and always returns an error:
// ctx.Err() when ctx is done, otherwise the reason the stream broke
// (containerd restarted: reconnect after a backoff and resync).
//
// A stream that containerd does not offer (no Events service) gives an
// error wrapping runtime.ErrUnsupported.
//
// Task events come before CRI has finished with the object: a sandbox's
// Started arrives while RunPodSandbox is still running, so CRI may list
// the sandbox as not ready (and without IP) for a moment longer. Stopped
// comes twice, from /tasks/exit and /tasks/delete. Exec processes are not
// reported, nor are containers that CRI did not create. Events the client
// cannot decode are skipped: one bad payload should not cut the trigger
// stream. fn runs on the receiving goroutine, so it should hand work off
// rather than block.
func (c *Client) WatchEvents(ctx context.Context, fn func(runtime.Event)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream when fn's caller stops reading
	stream, err := c.events.Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: c.filters()})
	if err != nil {
		return streamErr(ctx, err)
	}
	cl := classifier{get: c.getRecord, known: make(map[string]object)}
	for {
		env, err := stream.Recv()
		if err != nil {
			return streamErr(ctx, err)
		}
		if ev, ok := c.toEvent(ctx, &cl, env); ok {
			fn(ev)
		}
	}
}

func streamErr(ctx context.Context, err error) error {
	return runtime.StreamError(ctx, "containerd events", "containerd", err, status.Code(err) == codes.Unimplemented)
}

// toEvent turns an envelope into an Event; ok is false for envelopes that
// are not reported (other namespaces or topics, exec processes, non-CRI
// containers, payloads that do not decode).
func (c *Client) toEvent(ctx context.Context, cl *classifier, env *types.Envelope) (ev runtime.Event, ok bool) {
	// The filter already asks for the namespace; checking again keeps a
	// server that ignores filters from leaking other namespaces in.
	if env.GetNamespace() != c.ns {
		return runtime.Event{}, false
	}
	// The api module's event types register themselves with protobuf's
	// registry, which typeurl consults; an event type it does not know
	// (a newer containerd's) fails here and is skipped.
	payload, err := typeurl.UnmarshalAny(env.GetEvent())
	if err != nil {
		return runtime.Event{}, false
	}
	var (
		action      runtime.EventKind
		containerID string
		execID      string // "" or containerID for the init process
		pid         uint32
	)
	switch p := payload.(type) {
	case *events.TaskCreate:
		action, containerID, pid = runtime.Created, p.GetContainerID(), p.GetPid()
	case *events.TaskStart:
		action, containerID, pid = runtime.Started, p.GetContainerID(), p.GetPid()
	case *events.TaskExit:
		action, containerID, execID, pid = runtime.Stopped, p.GetContainerID(), p.GetID(), p.GetPid()
	case *events.TaskDelete:
		action, containerID, execID, pid = runtime.Stopped, p.GetContainerID(), p.GetID(), p.GetPid()
	case *events.ContainerDelete:
		action, containerID = runtime.Deleted, p.GetID()
	default:
		return runtime.Event{}, false
	}
	if !topicOf(env.GetTopic(), action) || containerID == "" {
		return runtime.Event{}, false
	}
	// TaskExit.id is the exec id, equal to container_id for the init
	// process; TaskDelete.id is empty for the init process.
	if execID != "" && execID != containerID {
		return runtime.Event{}, false
	}
	obj := cl.classify(ctx, containerID, action == runtime.Deleted)
	if obj.notCRI {
		return runtime.Event{}, false
	}
	return runtime.Event{
		Kind:      action | obj.kind,
		ID:        containerID,
		SandboxID: obj.sandboxID,
		Pid:       int(pid),
		Time:      envelopeTime(env),
		Source:    runtime.SourceContainerd,
	}, true
}

// envelopeTime is when containerd says the event happened; zero when the
// envelope carries no time (AsTime would give 1970).
func envelopeTime(env *types.Envelope) time.Time {
	if env.GetTimestamp() == nil {
		return time.Time{}
	}
	return env.GetTimestamp().AsTime()
}

// topicOf reports whether topic is one containerd publishes an event of
// this action on: a payload under another topic is not what it seems.
func topicOf(topic string, action runtime.EventKind) bool {
	switch action {
	case runtime.Created:
		return topic == "/tasks/create"
	case runtime.Started:
		return topic == "/tasks/start"
	case runtime.Stopped:
		return topic == "/tasks/exit" || topic == "/tasks/delete"
	case runtime.Deleted:
		return topic == "/containers/delete"
	}
	return false
}

// object is what the client knows of a container id.
type object struct {
	kind      runtime.EventKind // OnSandbox, OnContainer, or 0 when unknown
	sandboxID string
	notCRI    bool // the record exists but CRI did not make it
}

// classifier remembers, for one subscription, which ids are sandboxes and
// which are containers, asking containerd the first time it sees an id.
type classifier struct {
	get   func(ctx context.Context, id string) (*containersapi.Container, error)
	known map[string]object
}

// classify returns what is known about id. When gone is set (the
// /containers/delete event), the record no longer exists: only the cache
// can answer, and the entry is dropped.
func (cl *classifier) classify(ctx context.Context, id string, gone bool) object {
	obj, ok := cl.known[id]
	if gone {
		delete(cl.known, id)
		return obj
	}
	if ok {
		return obj
	}
	r, err := cl.get(ctx, id)
	if err != nil {
		// NotFound (removed meanwhile) or containerd trouble: report
		// the event unclassified, and ask again on the next one.
		return object{}
	}
	obj = classifyRecord(id, r)
	if len(cl.known) >= maxClassifiedEntries {
		clear(cl.known)
	}
	cl.known[id] = obj
	return obj
}

func classifyRecord(id string, r *containersapi.Container) object {
	switch r.GetLabels()[labelKind] {
	case kindSandbox:
		return object{kind: runtime.OnSandbox, sandboxID: id}
	case kindContainer:
		sb := specAnnotation(r, annotationSandboxID)
		if sb == "" {
			sb = r.GetSandbox()
		}
		return object{kind: runtime.OnContainer, sandboxID: sb}
	}
	return object{notCRI: true}
}

// specAnnotation reads an annotation from the record's OCI spec, which
// containerd stores as an Any holding JSON.
func specAnnotation(r *containersapi.Container, key string) string {
	raw := r.GetSpec().GetValue()
	if len(raw) == 0 {
		return ""
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		return ""
	}
	return spec.Annotations[key]
}

// getRecord fetches a container record.
func (c *Client) getRecord(ctx context.Context, id string) (*containersapi.Container, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.containers.Get(ctx, &containersapi.GetContainerRequest{ID: id})
	if err != nil {
		return nil, fmt.Errorf("containerd get container %s: %w", id, err)
	}
	return resp.GetContainer(), nil
}
