package containerd

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/internal/grpcunix"
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
	stream, err := c.conn.NewStream(ctx, methodSubscribe, subscribeRequest(c.filters()))
	if err != nil {
		return streamErr(ctx, err)
	}
	defer stream.Close()
	cl := classifier{get: c.getRecord, known: make(map[string]object)}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return streamErr(ctx, err)
		}
		env, err := decodeEnvelope(msg)
		if err != nil {
			continue
		}
		if ev, ok := c.toEvent(ctx, &cl, env); ok {
			fn(ev)
		}
	}
}

func streamErr(ctx context.Context, err error) error {
	return runtime.StreamError(ctx, "containerd events", "containerd", err, grpcunix.IsUnimplemented(err))
}

// toEvent turns an envelope into an Event; ok is false for envelopes that
// are not reported (other namespaces or topics, exec processes, non-CRI
// containers, undecodable payloads).
func (c *Client) toEvent(ctx context.Context, cl *classifier, env envelope) (ev runtime.Event, ok bool) {
	// The filter already asks for the namespace; checking again keeps a
	// server that ignores filters from leaking other namespaces in.
	if env.Namespace != c.ns {
		return runtime.Event{}, false
	}
	var action runtime.EventKind
	name := eventType(env.TypeURL)
	switch {
	case env.Topic == "/tasks/create" && name == typeTaskCreate:
		action = runtime.Created
	case env.Topic == "/tasks/start" && name == typeTaskStart:
		action = runtime.Started
	case env.Topic == "/tasks/exit" && name == typeTaskExit,
		env.Topic == "/tasks/delete" && name == typeTaskDelete:
		action = runtime.Stopped
	case env.Topic == "/containers/delete" && name == typeContainerDelete:
		action = runtime.Deleted
	default:
		return runtime.Event{}, false
	}
	p, err := decodePayload(name, env.Value)
	if err != nil || p.ContainerID == "" {
		return runtime.Event{}, false
	}
	// TaskExit.id is the exec id, equal to container_id for the init
	// process; TaskDelete.id is empty for the init process.
	if p.ExecID != "" && p.ExecID != p.ContainerID {
		return runtime.Event{}, false
	}
	obj := cl.classify(ctx, p.ContainerID, action == runtime.Deleted)
	if obj.notCRI {
		return runtime.Event{}, false
	}
	return runtime.Event{
		Kind:      action | obj.kind,
		ID:        p.ContainerID,
		SandboxID: obj.sandboxID,
		Pid:       int(p.Pid),
		Time:      env.Timestamp,
		Source:    runtime.SourceContainerd,
	}, true
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
	get   func(ctx context.Context, id string) (record, error)
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

func classifyRecord(id string, r record) object {
	switch r.Labels[labelKind] {
	case kindSandbox:
		return object{kind: runtime.OnSandbox, sandboxID: id}
	case kindContainer:
		sb := specAnnotation(r, annotationSandboxID)
		if sb == "" {
			sb = r.Sandbox
		}
		return object{kind: runtime.OnContainer, sandboxID: sb}
	}
	return object{notCRI: true}
}

// specAnnotation reads an annotation from the record's OCI spec, which
// containerd stores as an Any holding JSON.
func specAnnotation(r record, key string) string {
	if len(r.Spec) == 0 {
		return ""
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(r.Spec, &spec); err != nil {
		return ""
	}
	return spec.Annotations[key]
}

// getRecord fetches a container record.
func (c *Client) getRecord(ctx context.Context, id string) (record, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.conn.Invoke(ctx, methodGetContainer, getContainerRequest(id))
	if err != nil {
		return record{}, fmt.Errorf("containerd get container %s: %w", id, err)
	}
	return decodeGetContainerResponse(resp)
}
