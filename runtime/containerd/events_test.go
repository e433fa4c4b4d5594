package containerd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/patu-dev/patu/runtime"
)

// stubRecords answers Containers.Get from a sandbox -> container table,
// the way CRI labels its records.
func stubRecords(pods map[string]string) func(context.Context, string) (*containersapi.Container, error) {
	return func(_ context.Context, id string) (*containersapi.Container, error) {
		for sb, ctr := range pods {
			switch id {
			case sb:
				return &containersapi.Container{ID: id, Labels: map[string]string{labelKind: kindSandbox}}, nil
			case ctr:
				return &containersapi.Container{
					ID:     id,
					Labels: map[string]string{labelKind: kindContainer},
					Spec:   specAny(fmt.Sprintf(`{"annotations":{%q:%q}}`, annotationSandboxID, sb)),
				}, nil
			}
		}
		return nil, status.Error(codes.NotFound, "not found")
	}
}

// specAny wraps an OCI spec document as containerd stores it in a record.
func specAny(json string) *anypb.Any {
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: []byte(json)}
}

// decodeEnvelope unmarshals one recorded message, as the generated client
// does with each message of the stream.
func decodeEnvelope(b []byte) (*types.Envelope, error) {
	env := new(types.Envelope)
	if err := proto.Unmarshal(b, env); err != nil {
		return nil, err
	}
	return env, nil
}

// replay runs a recorded envelope stream through the client's conversion.
func replay(t *testing.T, file string, pods map[string]string) []runtime.Event {
	t.Helper()
	c := &Client{ns: DefaultNamespace}
	cl := classifier{get: stubRecords(pods), known: make(map[string]object)}
	var out []runtime.Event
	for i, m := range load(t, file) {
		env, err := decodeEnvelope(m)
		if err != nil {
			t.Fatalf("envelope %d: %v", i, err)
		}
		if env.GetNamespace() != "k8s.io" || envelopeTime(env).IsZero() || env.GetTopic() == "" {
			t.Errorf("envelope %d: %+v", i, env)
		}
		if ev, ok := c.toEvent(context.Background(), &cl, env); ok {
			out = append(out, ev)
		}
	}
	return out
}

// TestRealEnvelopes decodes event streams recorded from real containerd
// (TestLive with PATU_CONTAINERD_DUMP): runp, create, start, exec, stopp
// and rmp of one pod on 1.6.20, of five on 2.4.2.
func TestRealEnvelopes(t *testing.T) {
	t.Run("containerd 1.6.20", func(t *testing.T) {
		const (
			sb    = "00a4a76b3d4cba8800c4e47cfd90137e61dd01261d52009d2ad9f3f9a19a3baf"
			ctr   = "648b85b4079b214c7b89fceada34ff2e26214e92711bcb47f31b53eba5da407e"
			oldSb = "03582c20ce768fec463e281ec2ad9141271942ffe5743c7389afe3ed498b47d9" // stopped before the recording
			oldCt = "8c8741a23ff4164c2a66141106de5a5b897d6204108dc46d31e0251bc57bf038"
		)
		got := replay(t, "containerd-1.6.20-envelopes.pb", map[string]string{sb: ctr})
		type ev struct {
			kind   runtime.EventKind
			id, sb string
			pid    int
		}
		want := []ev{
			{runtime.SandboxCreated, sb, sb, 9903},
			{runtime.SandboxStarted, sb, sb, 9903},
			{runtime.ContainerCreated, ctr, sb, 9958},
			{runtime.ContainerStarted, ctr, sb, 9958},
			// the exec's exit (id = exec id) is not reported
			{runtime.ContainerStopped, ctr, sb, 9958},
			{runtime.ContainerStopped, ctr, sb, 9958},
			{runtime.SandboxStopped, sb, sb, 9903},
			{runtime.SandboxStopped, sb, sb, 9903},
			{runtime.ContainerDeleted, ctr, sb, 0},
			{runtime.SandboxDeleted, sb, sb, 0},
			// removed without a task event seen: the record is gone
			{runtime.Deleted, oldCt, "", 0},
			{runtime.Deleted, oldSb, "", 0},
		}
		if len(got) != len(want) {
			t.Fatalf("got %d events, want %d: %+v", len(got), len(want), got)
		}
		for i, w := range want {
			g := got[i]
			if (ev{g.Kind, g.ID, g.SandboxID, g.Pid}) != w || g.Source != runtime.SourceContainerd {
				t.Errorf("event %d: got %v %.12s sandbox %.12s pid %d, want %v %.12s sandbox %.12s pid %d",
					i, g.Kind, g.ID, g.SandboxID, g.Pid, w.kind, w.id, w.sb, w.pid)
			}
			if i > 0 && g.Time.Before(got[i-1].Time) {
				t.Errorf("event %d: time %v before the previous one", i, g.Time)
			}
		}
	})
	t.Run("containerd 2.4.2", func(t *testing.T) {
		pods := map[string]string{
			"7c95e43f025ce2cdbb958f9c2508709a07cf5ed632411bd706f4f1d53388168a": "81884dc0136042a27ecbdc3ae1bd2c89418fc7e341a4641428d238267ec2507e",
			"38476783e239abff2373c757e8acf0213a6b67ba4ea09477e39f606a74c1ff52": "e1fc19dc7ea1c122ba311e8781fe7b108da3773baad5432d777513e754616862",
			"973c2d7cb13357ccd46a6431a3cf0c7a573965e459309932d791eef34c056306": "9b3e0c921fa6c009da416dce9f00cb3387d2593f64421a801bd7822d55dd3fab",
			"0b8b51c5c56f6955bc253ac448c70ab6f56945afcf034a644ab1cb68add848b3": "0acdb832c20dc5303385f4323169988e498d8a5a27da3cadb13e3073f5ed5384",
			"4ef80bbf4fdfbd67040f7b51fa2b424ccbc8ff21bfacecc6d52988c48a0a1419": "288da75b2e09644dbbf6f992f8455e7e7e6c1128b5ad1447524c717f9bdab7d6",
		}
		got := replay(t, "containerd-2.4.2-envelopes.pb", pods)
		count := make(map[runtime.EventKind]int)
		for _, g := range got {
			count[g.Kind]++
			wantSb := g.ID
			if g.Kind.IsContainer() {
				for sb, ctr := range pods {
					if ctr == g.ID {
						wantSb = sb
					}
				}
			}
			if g.SandboxID != wantSb {
				t.Errorf("%v %.12s: sandbox %.12s, want %.12s", g.Kind, g.ID, g.SandboxID, wantSb)
			}
			if a := g.Kind.Action(); (a == runtime.Deleted) != (g.Pid == 0) {
				t.Errorf("%v %.12s: pid %d", g.Kind, g.ID, g.Pid)
			}
		}
		// five pods up; two stopped (exit + delete each), one of them removed
		want := map[runtime.EventKind]int{
			runtime.SandboxCreated: 5, runtime.SandboxStarted: 5, runtime.ContainerCreated: 5, runtime.ContainerStarted: 5,
			runtime.ContainerStopped: 4, runtime.SandboxStopped: 4, runtime.ContainerDeleted: 1, runtime.SandboxDeleted: 1,
		}
		if fmt.Sprint(count) != fmt.Sprint(want) {
			t.Errorf("events by kind %v, want %v", count, want)
		}
	})
}

// TestEnvelopesSkipped checks that envelopes the client cannot use are
// skipped, not reported and not fatal: a payload that does not decode, an
// event type this build does not know, a known payload under another topic.
func TestEnvelopesSkipped(t *testing.T) {
	start, err := anypb.New(&events.TaskStart{ContainerID: "ctr", Pid: 7})
	if err != nil {
		t.Fatal(err)
	}
	broken := &anypb.Any{TypeUrl: "containerd.events.TaskStart", Value: []byte{0xff, 0xff, 0xff}}
	unknown := &anypb.Any{TypeUrl: "containerd.events.TaskFrobnicate", Value: nil}
	tests := []struct {
		name string
		env  *types.Envelope
	}{
		{"undecodable payload", &types.Envelope{Namespace: "k8s.io", Topic: "/tasks/start", Event: broken}},
		{"unknown event type", &types.Envelope{Namespace: "k8s.io", Topic: "/tasks/frobnicate", Event: unknown}},
		{"no payload", &types.Envelope{Namespace: "k8s.io", Topic: "/tasks/start"}},
		{"payload under another topic", &types.Envelope{Namespace: "k8s.io", Topic: "/tasks/exit", Event: start}},
		{"other namespace", &types.Envelope{Namespace: "moby", Topic: "/tasks/start", Event: start}},
	}
	c := &Client{ns: "k8s.io"}
	cl := classifier{get: stubRecords(map[string]string{"sb": "ctr"}), known: make(map[string]object)}
	for _, tt := range tests {
		if ev, ok := c.toEvent(context.Background(), &cl, tt.env); ok {
			t.Errorf("%s: reported %+v", tt.name, ev)
		}
	}
}

func TestEnvelopeFieldsSkipped(t *testing.T) {
	// Unknown fields of every wire type, and a type URL with the usual
	// prefix, must not disturb decoding: a later containerd may add both.
	var start []byte
	start = protowire.AppendTag(start, 1, protowire.BytesType)
	start = protowire.AppendString(start, "ctr")
	start = protowire.AppendTag(start, 2, protowire.VarintType)
	start = protowire.AppendVarint(start, 7)
	start = protowire.AppendTag(start, 9, protowire.Fixed32Type)
	start = protowire.AppendFixed32(start, 1)
	var anyMsg []byte
	anyMsg = protowire.AppendTag(anyMsg, 1, protowire.BytesType)
	anyMsg = protowire.AppendString(anyMsg, "type.googleapis.com/containerd.events.TaskStart")
	anyMsg = protowire.AppendTag(anyMsg, 2, protowire.BytesType)
	anyMsg = protowire.AppendBytes(anyMsg, start)
	var env []byte
	env = protowire.AppendTag(env, 2, protowire.BytesType)
	env = protowire.AppendString(env, "k8s.io")
	env = protowire.AppendTag(env, 15, protowire.Fixed64Type)
	env = protowire.AppendFixed64(env, 1)
	env = protowire.AppendTag(env, 16, protowire.StartGroupType)
	env = protowire.AppendTag(env, 1, protowire.VarintType)
	env = protowire.AppendVarint(env, 1)
	env = protowire.AppendTag(env, 16, protowire.EndGroupType)
	env = protowire.AppendTag(env, 3, protowire.BytesType)
	env = protowire.AppendString(env, "/tasks/start")
	env = protowire.AppendTag(env, 4, protowire.BytesType)
	env = protowire.AppendBytes(env, anyMsg)

	e, err := decodeEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	if !envelopeTime(e).IsZero() {
		t.Errorf("time of an envelope without one: %v", envelopeTime(e))
	}
	c := &Client{ns: "k8s.io"}
	cl := classifier{get: stubRecords(map[string]string{"sb": "ctr"}), known: make(map[string]object)}
	ev, ok := c.toEvent(context.Background(), &cl, e)
	if !ok || ev.Kind != runtime.ContainerStarted || ev.ID != "ctr" || ev.SandboxID != "sb" || ev.Pid != 7 {
		t.Fatalf("toEvent = %+v, %v", ev, ok)
	}
}

func TestClassifier(t *testing.T) {
	calls := 0
	records := map[string]*containersapi.Container{
		"sb":      {Labels: map[string]string{labelKind: kindSandbox}},
		"ctr":     {Labels: map[string]string{labelKind: kindContainer}, Spec: specAny(`{"annotations":{"io.kubernetes.cri.sandbox-id":"sb"}}`)},
		"ctr-2x":  {Labels: map[string]string{labelKind: kindContainer}, Sandbox: "sb"}, // spec without the annotation
		"bad":     {Labels: map[string]string{labelKind: kindContainer}, Spec: specAny(`not json`)},
		"plain":   {Labels: map[string]string{"owner": "ctr"}},
		"nolabel": {},
	}
	errBroken := errors.New("containerd is unwell")
	cl := classifier{
		get: func(_ context.Context, id string) (*containersapi.Container, error) {
			calls++
			if id == "broken" {
				return nil, errBroken
			}
			r, ok := records[id]
			if !ok {
				return nil, status.Error(codes.NotFound, "not found")
			}
			return r, nil
		},
		known: make(map[string]object),
	}
	tests := []struct {
		id    string
		gone  bool
		want  object
		calls int // Get calls made so far
	}{
		{id: "sb", want: object{kind: runtime.OnSandbox, sandboxID: "sb"}, calls: 1},
		{id: "sb", want: object{kind: runtime.OnSandbox, sandboxID: "sb"}, calls: 1}, // cached
		{id: "ctr", want: object{kind: runtime.OnContainer, sandboxID: "sb"}, calls: 2},
		{id: "ctr-2x", want: object{kind: runtime.OnContainer, sandboxID: "sb"}, calls: 3},
		{id: "bad", want: object{kind: runtime.OnContainer}, calls: 4},
		{id: "plain", want: object{notCRI: true}, calls: 5},
		{id: "nolabel", want: object{notCRI: true}, calls: 6},
		{id: "missing", want: object{}, calls: 7},
		{id: "missing", want: object{}, calls: 8}, // failures are not cached
		{id: "broken", want: object{}, calls: 9},
		{id: "ctr", gone: true, want: object{kind: runtime.OnContainer, sandboxID: "sb"}, calls: 9},
		{id: "ctr", gone: true, want: object{}, calls: 9}, // dropped from the cache
		{id: "unseen", gone: true, want: object{}, calls: 9},
	}
	for i, tt := range tests {
		got := cl.classify(context.Background(), tt.id, tt.gone)
		if got != tt.want || calls != tt.calls {
			t.Errorf("step %d classify(%q, gone=%v) = %+v after %d Get calls, want %+v after %d",
				i, tt.id, tt.gone, got, calls, tt.want, tt.calls)
		}
	}

	// The cache is bounded.
	cl.known = make(map[string]object)
	cl.get = func(context.Context, string) (*containersapi.Container, error) { return records["sb"], nil }
	for i := range maxClassifiedEntries + 10 {
		cl.classify(context.Background(), fmt.Sprint(i), false)
	}
	if len(cl.known) > maxClassifiedEntries {
		t.Errorf("cache holds %d entries, cap %d", len(cl.known), maxClassifiedEntries)
	}
}
