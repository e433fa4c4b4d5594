package containerd

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// fakeContainerd serves containerd's Version, Containers.Get and
// Events.Subscribe on a unix socket. Its messages are fixtures: the gen-*
// files were encoded by containerd's own generated API code (see
// testdata/gen), so the client's decoder is checked against the real
// encoder, over a real gRPC connection.
type fakeContainerd struct {
	version   []byte            // VersionResponse
	records   map[string][]byte // container id -> GetContainerResponse
	envelopes [][]byte          // sent to each subscriber in order
	// hold keeps the stream open after the envelopes until the client
	// goes away; otherwise the server ends it (the client sees EOF).
	hold bool
	// noEvents leaves the Events service out, like a containerd built
	// without it would (and like CRI-O, which has none of these).
	noEvents bool

	mu          sync.Mutex
	filters     []string // of the last Subscribe
	subscribeNS []string // containerd-namespace metadata of the last Subscribe
	getNS       []string // containerd-namespace metadata of Get calls
	gets        []string // ids asked for
	subscribed  chan struct{}
}

// rawCodec lets the fake's gRPC server hand message bodies through
// unchanged: the fixtures are already serialized.
type rawCodec struct{}

// frame is a serialized protobuf message.
type frame []byte

func (rawCodec) Marshal(v any) ([]byte, error) {
	if f, ok := v.(frame); ok {
		return f, nil
	}
	return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*f = append((*f)[:0], data...) // gRPC reuses data's buffer
	return nil
}

func (rawCodec) Name() string { return "proto" }

// load reads a file of length-delimited messages.
func load(t *testing.T, name string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for len(b) > 0 {
		m, n := protowire.ConsumeBytes(b)
		if n < 0 {
			t.Fatalf("%s: bad framing", name)
		}
		out = append(out, m)
		b = b[n:]
	}
	return out
}

// stringField returns the first length-delimited field num of msg, for the
// fake's own needs (request ids, record ids).
func stringField(t *testing.T, msg []byte, num protowire.Number) []byte {
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			t.Fatal("bad tag")
		}
		msg = msg[l:]
		l = protowire.ConsumeFieldValue(n, typ, msg)
		if l < 0 {
			t.Fatal("bad field")
		}
		if n == num && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(msg)
			return v
		}
		msg = msg[l:]
	}
	return nil
}

// newFake loads the gen-* fixtures.
func newFake(t *testing.T) *fakeContainerd {
	f := &fakeContainerd{
		version:    readFile(t, "gen-version.pb"),
		records:    make(map[string][]byte),
		envelopes:  load(t, "gen-envelopes.pb"),
		subscribed: make(chan struct{}),
	}
	for _, r := range load(t, "gen-containers.pb") {
		// GetContainerResponse.container(1).id(1)
		f.records[string(stringField(t, stringField(t, r, 1), 1))] = r
	}
	return f
}

func (f *fakeContainerd) handleVersion(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	var req frame
	if err := dec(&req); err != nil {
		return nil, err
	}
	return frame(f.version), nil
}

func (f *fakeContainerd) handleGet(t *testing.T) grpc.MethodHandler {
	return func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		var req frame
		if err := dec(&req); err != nil {
			return nil, err
		}
		id := string(stringField(t, req, 1))
		md, _ := metadata.FromIncomingContext(ctx)
		f.mu.Lock()
		f.gets = append(f.gets, id)
		f.getNS = append(f.getNS, md.Get(namespaceKey)...)
		f.mu.Unlock()
		r, ok := f.records[id]
		if !ok {
			return nil, status.Errorf(codes.NotFound, "container %q in namespace %q: not found", id, md.Get(namespaceKey))
		}
		return frame(r), nil
	}
}

func (f *fakeContainerd) handleSubscribe(t *testing.T) grpc.StreamHandler {
	return func(_ any, s grpc.ServerStream) error {
		var req frame
		if err := s.RecvMsg(&req); err != nil {
			return err
		}
		var filters []string
		for b := []byte(req); len(b) > 0; {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 || num != 1 || typ != protowire.BytesType {
				return status.Error(codes.InvalidArgument, "fake: bad SubscribeRequest")
			}
			v, m := protowire.ConsumeString(b[n:])
			filters = append(filters, v)
			b = b[n+m:]
		}
		md, _ := metadata.FromIncomingContext(s.Context())
		f.mu.Lock()
		f.filters, f.subscribeNS = filters, md.Get(namespaceKey)
		f.mu.Unlock()
		close(f.subscribed)
		for _, e := range f.envelopes {
			if err := s.SendMsg(frame(e)); err != nil {
				return err
			}
		}
		if f.hold {
			<-s.Context().Done()
			return s.Context().Err()
		}
		return nil
	}
}

// serve runs f on a socket in a temporary directory.
func serve(t *testing.T, f *fakeContainerd) (string, *grpc.Server) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	if f != nil {
		srv.RegisterService(&grpc.ServiceDesc{
			ServiceName: "containerd.services.version.v1.Version",
			HandlerType: (*any)(nil),
			Methods:     []grpc.MethodDesc{{MethodName: "Version", Handler: f.handleVersion}},
		}, f)
		srv.RegisterService(&grpc.ServiceDesc{
			ServiceName: "containerd.services.containers.v1.Containers",
			HandlerType: (*any)(nil),
			Methods:     []grpc.MethodDesc{{MethodName: "Get", Handler: f.handleGet(t)}},
		}, f)
		if !f.noEvents {
			srv.RegisterService(&grpc.ServiceDesc{
				ServiceName: "containerd.services.events.v1.Events",
				HandlerType: (*any)(nil),
				Streams: []grpc.StreamDesc{{
					StreamName: "Subscribe", ServerStreams: true, Handler: f.handleSubscribe(t),
				}},
			}, f)
		}
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock, srv
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
