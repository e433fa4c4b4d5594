package containerd

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/patu-dev/patu/runtime"
)

// IDs used by testdata/gen.
const (
	genSandbox   = "5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"
	genContainer = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"
)

// genTime is the timestamp of the i-th envelope of gen-envelopes.pb.
func genTime(i int) time.Time {
	return time.Date(2025, 11, 26, 23, 40, 0, 123456789, time.UTC).Add(time.Duration(i) * time.Second)
}

func TestDial(t *testing.T) {
	sock, _ := serve(t, newFake(t))
	notContainerd, _ := serve(t, nil) // e.g. CRI-O: gRPC, but none of containerd's services
	tests := []struct {
		name        string
		endpoint    string
		namespace   string
		wantNS      string
		wantErr     string
		unsupported bool
	}{
		{name: "plain path, default namespace", endpoint: sock, wantNS: "k8s.io"},
		{name: "unix URL, own namespace", endpoint: "unix://" + sock, namespace: "moby", wantNS: "moby"},
		{name: "not containerd", endpoint: notContainerd, wantErr: "not a containerd socket", unsupported: true},
		{name: "missing socket", endpoint: filepath.Join(t.TempDir(), "none.sock"), wantErr: "none.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Dial(context.Background(), tt.endpoint, tt.namespace)
			if tt.wantErr != "" {
				if err == nil {
					c.Close()
					t.Fatal("Dial succeeded")
				}
				if !strings.Contains(err.Error(), tt.wantErr) || errors.Is(err, runtime.ErrUnsupported) != tt.unsupported {
					t.Fatalf("Dial = %v; want error with %q, ErrUnsupported %v", err, tt.wantErr, tt.unsupported)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if v, r := c.Version(); v != "v2.4.2" || r != "gen" {
				t.Errorf("Version() = %q, %q", v, r)
			}
			if c.Namespace() != tt.wantNS || c.Endpoint() != sock {
				t.Errorf("Namespace() = %q, Endpoint() = %q", c.Namespace(), c.Endpoint())
			}
		})
	}
}

func watchAll(t *testing.T, f *fakeContainerd, namespace string) ([]runtime.Event, error) {
	t.Helper()
	sock, _ := serve(t, f)
	c, err := Dial(context.Background(), sock, namespace)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got []runtime.Event
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.WatchEvents(ctx, func(ev runtime.Event) { got = append(got, ev) })
	return got, err
}

func checkEvents(t *testing.T, got, want []runtime.Event) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d events, want %d", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		g := got[i]
		if !g.Time.Equal(want[i].Time) {
			t.Errorf("event %d: time %v, want %v", i, g.Time, want[i].Time)
		}
		g.Time = want[i].Time
		if !reflect.DeepEqual(g, want[i]) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, g, want[i])
		}
	}
}

func TestWatchEvents(t *testing.T) {
	ev := func(k runtime.EventKind, id, sandbox string, pid, i int) runtime.Event {
		return runtime.Event{Kind: k, ID: id, SandboxID: sandbox, Pid: pid, Time: genTime(i), Source: runtime.SourceContainerd}
	}
	// See testdata/gen/main.go for what each envelope is.
	want := []runtime.Event{
		ev(runtime.SandboxCreated, genSandbox, genSandbox, 4242, 2),
		ev(runtime.SandboxStarted, genSandbox, genSandbox, 4242, 3),
		ev(runtime.ContainerCreated, genContainer, genSandbox, 4300, 4),
		ev(runtime.ContainerStarted, genContainer, genSandbox, 4300, 5),
		ev(runtime.ContainerStopped, genContainer, genSandbox, 4300, 10), // exit
		ev(runtime.ContainerStopped, genContainer, genSandbox, 4300, 11), // delete
		ev(runtime.SandboxStopped, genSandbox, genSandbox, 4242, 12),
		ev(runtime.SandboxStopped, genSandbox, genSandbox, 4242, 13),
		ev(runtime.ContainerDeleted, genContainer, genSandbox, 0, 14),
		ev(runtime.SandboxDeleted, genSandbox, genSandbox, 0, 15),
		ev(runtime.Deleted, "never-seen", "", 0, 17),
	}
	f := newFake(t)
	got, err := watchAll(t, f, "")
	if !errors.Is(err, io.EOF) || errors.Is(err, runtime.ErrUnsupported) {
		t.Errorf("WatchEvents after the server ended the stream = %v, want an EOF error", err)
	}
	checkEvents(t, got, want)

	wantFilters := []string{
		`namespace=="k8s.io",topic=="/tasks/create"`,
		`namespace=="k8s.io",topic=="/tasks/start"`,
		`namespace=="k8s.io",topic=="/tasks/exit"`,
		`namespace=="k8s.io",topic=="/tasks/delete"`,
		`namespace=="k8s.io",topic=="/containers/delete"`,
	}
	if !reflect.DeepEqual(f.filters, wantFilters) {
		t.Errorf("filters %q, want %q", f.filters, wantFilters)
	}
	if !reflect.DeepEqual(f.subscribeNS, []string{"k8s.io"}) {
		t.Errorf("Subscribe namespace metadata %q", f.subscribeNS)
	}
	// One Get per id, cached afterwards; none for the deletes (the record
	// is gone by then).
	if want := []string{genSandbox, genContainer, "plain-ctr-container"}; !reflect.DeepEqual(f.gets, want) {
		t.Errorf("Get calls %q, want %q", f.gets, want)
	}
	for _, ns := range f.getNS {
		if ns != "k8s.io" {
			t.Errorf("Get with namespace metadata %q", f.getNS)
			break
		}
	}
}

func TestWatchEventsNamespace(t *testing.T) {
	// Only envelope 0 is in namespace "moby"; its container has no record
	// in the fake, so the event comes unclassified.
	f := newFake(t)
	got, err := watchAll(t, f, "moby")
	if !errors.Is(err, io.EOF) {
		t.Errorf("WatchEvents = %v", err)
	}
	checkEvents(t, got, []runtime.Event{{
		Kind: runtime.Created, ID: "moby-ctr", Pid: 99, Time: genTime(0), Source: runtime.SourceContainerd,
	}})
	if !strings.HasPrefix(f.filters[0], `namespace=="moby",`) || !reflect.DeepEqual(f.subscribeNS, []string{"moby"}) ||
		!reflect.DeepEqual(f.getNS, []string{"moby"}) {
		t.Errorf("filters %q, subscribe ns %q, get ns %q", f.filters, f.subscribeNS, f.getNS)
	}
}

func TestWatchEventsEnd(t *testing.T) {
	tests := []struct {
		name        string
		noEvents    bool
		end         func(cancel context.CancelFunc, stop func())
		timeout     time.Duration
		unsupported bool
		want        error // errors.Is target, nil = any error that is not the caller's
	}{
		{name: "no events service", noEvents: true, unsupported: true, want: runtime.ErrUnsupported},
		{name: "containerd stops", end: func(_ context.CancelFunc, stop func()) { stop() }},
		{name: "caller cancels", end: func(cancel context.CancelFunc, _ func()) { cancel() }, want: context.Canceled},
		{name: "caller deadline", timeout: 200 * time.Millisecond, want: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.hold, f.noEvents = true, tt.noEvents
			sock, srv := serve(t, f)
			c, err := Dial(context.Background(), sock, "")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
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
			go func() { done <- c.WatchEvents(ctx, func(runtime.Event) {}) }()
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
