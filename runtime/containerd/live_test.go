package containerd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/patu-dev/patu/runtime"
)

// TestLive watches a real containerd for PATU_CONTAINERD_EVENTS (a
// duration, default 10s) when PATU_CONTAINERD_ENDPOINT names its socket;
// drive pods with crictl meanwhile. With PATU_CONTAINERD_DUMP set to a file
// it also records the raw envelopes of a second, unfiltered-by-kind
// subscription there (length-delimited), which is how testdata/ got its
// real-containerd samples.
func TestLive(t *testing.T) {
	ep := os.Getenv("PATU_CONTAINERD_ENDPOINT")
	if ep == "" {
		t.Skip("PATU_CONTAINERD_ENDPOINT not set")
	}
	d := 10 * time.Second
	if v := os.Getenv("PATU_CONTAINERD_EVENTS"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := Dial(ctx, ep, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v, r := c.Version()
	t.Logf("containerd %s %s at %s, namespace %s", v, r, c.Endpoint(), c.Namespace())

	done := make(chan struct{})
	if file := os.Getenv("PATU_CONTAINERD_DUMP"); file != "" {
		go func() {
			defer close(done)
			dumpEnvelopes(ctx, t, c, file)
		}()
	} else {
		close(done)
	}
	n := 0
	err = c.WatchEvents(ctx, func(ev runtime.Event) {
		n++
		t.Logf("event %v id=%.12s sandbox=%.12s pid=%d time=%s", ev.Kind, ev.ID, ev.SandboxID, ev.Pid, ev.Time.Format(time.RFC3339Nano))
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WatchEvents: %v", err)
	}
	<-done
	t.Logf("%d events", n)
}

func dumpEnvelopes(ctx context.Context, t *testing.T, c *Client, file string) {
	stream, err := c.events.Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: []string{`namespace=="` + c.ns + `"`}})
	if err != nil {
		t.Errorf("dump subscribe: %v", err)
		return
	}
	var out []byte
	for {
		env, err := stream.Recv()
		if err != nil {
			break
		}
		msg, err := proto.Marshal(env)
		if err != nil {
			t.Errorf("dump: %v", err)
			return
		}
		out = protowire.AppendBytes(out, msg)
	}
	if err := os.WriteFile(filepath.Clean(file), out, 0o644); err != nil {
		t.Error(err)
	}
}
