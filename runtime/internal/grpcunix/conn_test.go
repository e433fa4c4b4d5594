package grpcunix

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec lets the grpc-go test server pass message bodies through as
// bytes: this package deals in serialized messages.
type rawCodec struct{}

type frame []byte

func (rawCodec) Marshal(v any) ([]byte, error) {
	if f, ok := v.(frame); ok {
		return f, nil
	}
	return nil, fmt.Errorf("cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("cannot unmarshal into %T", v)
	}
	*f = append((*f)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// testService is a grpc-go server with methods that exercise the client:
// Echo returns its request prefixed with the "who" metadata; Fail returns
// the status named by the request; Count streams the number of messages
// the request asks for, then ends with OK or, for "n,fail", an error;
// Hang streams nothing until the call ends; Zero and Two are unary methods
// that break the unary contract.
func serveGRPC(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "grpc.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	unary := func(fn func(ctx context.Context, req frame) (any, error)) grpc.MethodHandler {
		return func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var req frame
			if err := dec(&req); err != nil {
				return nil, err
			}
			return fn(ctx, req)
		}
	}
	stream := func(fn func(req frame, s grpc.ServerStream) error) grpc.StreamHandler {
		return func(_ any, s grpc.ServerStream) error {
			var req frame
			if err := s.RecvMsg(&req); err != nil {
				return err
			}
			return fn(req, s)
		}
	}
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "test.Service",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Echo", Handler: unary(func(ctx context.Context, req frame) (any, error) {
				md, _ := metadata.FromIncomingContext(ctx)
				return frame(strings.Join(md.Get("who"), ",") + ":" + string(req)), nil
			})},
			{MethodName: "Fail", Handler: unary(func(_ context.Context, req frame) (any, error) {
				var code uint32
				var msg string
				fmt.Sscanf(string(req), "%d", &code)
				if i := strings.IndexByte(string(req), ' '); i >= 0 {
					msg = string(req[i+1:])
				}
				return nil, status.Error(codes.Code(code), msg)
			})},
		},
		Streams: []grpc.StreamDesc{
			{StreamName: "Count", ServerStreams: true, Handler: stream(func(req frame, s grpc.ServerStream) error {
				var n int
				fail := strings.HasSuffix(string(req), ",fail")
				fmt.Sscanf(string(req), "%d", &n)
				for i := range n {
					if err := s.SendMsg(frame(fmt.Sprint(i))); err != nil {
						return err
					}
				}
				if fail {
					return status.Error(codes.Internal, "gave up")
				}
				return nil
			})},
			{StreamName: "Hang", ServerStreams: true, Handler: stream(func(_ frame, s grpc.ServerStream) error {
				<-s.Context().Done()
				return s.Context().Err()
			})},
			{StreamName: "Zero", ServerStreams: true, Handler: stream(func(frame, grpc.ServerStream) error { return nil })},
			{StreamName: "Two", ServerStreams: true, Handler: stream(func(_ frame, s grpc.ServerStream) error {
				s.SendMsg(frame("a"))
				return s.SendMsg(frame("b"))
			})},
		},
	}, nil)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock
}

func dial(t *testing.T, sock string, md map[string]string) *Conn {
	t.Helper()
	c, err := Dial(sock, md)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestInvoke(t *testing.T) {
	sock := serveGRPC(t)
	c := dial(t, "unix://"+sock, map[string]string{"who": "patu"})
	tests := []struct {
		method string
		req    string
		want   string // response, or error text
		code   Code
	}{
		{"/test.Service/Echo", "hello", "patu:hello", OK},
		{"/test.Service/Echo", "", "patu:", OK},
		{"/test.Service/Fail", "5 sandbox \"x\" not found", `rpc error: code = NotFound desc = sandbox "x" not found`, NotFound},
		// grpc-message is percent-encoded on the wire
		{"/test.Service/Fail", "13 100% broken: ✗", "rpc error: code = Internal desc = 100% broken: ✗", Internal},
		{"/test.Service/Nope", "", "unknown method Nope", Unimplemented},
		{"/other.Service/Echo", "", "unknown service other.Service", Unimplemented},
		{"/test.Service/Zero", "", "no response message", Internal},
		{"/test.Service/Two", "", "more than one response message", Internal},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.req, func(t *testing.T) {
			got, err := c.Invoke(context.Background(), tt.method, []byte(tt.req))
			if CodeOf(err) != tt.code {
				t.Fatalf("Invoke = %q, %v; want code %v", got, err, tt.code)
			}
			if tt.code == OK {
				if string(got) != tt.want {
					t.Errorf("Invoke = %q, want %q", got, tt.want)
				}
				return
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestStream(t *testing.T) {
	sock := serveGRPC(t)
	c := dial(t, sock, nil)
	tests := []struct {
		req  string
		want int
		code Code // at the end; OK means io.EOF
	}{
		{"0", 0, OK},
		{"3", 3, OK},
		{"200", 200, OK},
		{"2,fail", 2, Internal},
	}
	for _, tt := range tests {
		s, err := c.NewStream(context.Background(), "/test.Service/Count", []byte(tt.req))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			msg, err := s.Recv()
			if err != nil {
				if tt.code == OK && err != io.EOF || tt.code != OK && CodeOf(err) != tt.code {
					t.Errorf("Count(%s): stream ended with %v, want code %v", tt.req, err, tt.code)
				}
				if _, again := s.Recv(); again != err {
					t.Errorf("Count(%s): Recv after the end = %v, want %v again", tt.req, again, err)
				}
				break
			}
			if string(msg) != fmt.Sprint(n) {
				t.Errorf("Count(%s): message %d = %q", tt.req, n, msg)
			}
			n++
		}
		s.Close()
		s.Close()
		if n != tt.want {
			t.Errorf("Count(%s): %d messages, want %d", tt.req, n, tt.want)
		}
	}
}

func TestStreamEnds(t *testing.T) {
	tests := []struct {
		name string
		end  func(c *Conn, cancel context.CancelFunc)
		ctx  func() (context.Context, context.CancelFunc)
		code Code
	}{
		{"caller cancels", func(_ *Conn, cancel context.CancelFunc) { cancel() }, nil, Canceled},
		{"caller deadline", nil, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, DeadlineExceeded},
		{"conn closed", func(c *Conn, _ context.CancelFunc) { c.Close() }, nil, Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := serveGRPC(t)
			c := dial(t, sock, nil)
			ctx, cancel := context.WithCancel(context.Background())
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()
			// grpc-go sends no headers before the first message, so
			// NewStream itself waits here.
			if tt.end != nil {
				time.AfterFunc(50*time.Millisecond, func() { tt.end(c, cancel) })
			}
			s, err := c.NewStream(ctx, "/test.Service/Hang", nil)
			if err == nil {
				defer s.Close()
				_, err = s.Recv()
			}
			if CodeOf(err) != tt.code {
				t.Fatalf("Hang ended with %v, want code %v", err, tt.code)
			}
		})
	}
}

func TestServerGoes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "grpc.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "test.Service", HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{StreamName: "Hang", ServerStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
			<-s.Context().Done()
			return nil
		}}},
	}, nil)
	go srv.Serve(l)
	c := dial(t, sock, nil)
	time.AfterFunc(50*time.Millisecond, srv.Stop)
	s, err := c.NewStream(context.Background(), "/test.Service/Hang", nil)
	if err == nil {
		defer s.Close()
		_, err = s.Recv()
	}
	if CodeOf(err) != Unavailable {
		t.Fatalf("Hang after the server stopped = %v, want Unavailable", err)
	}
	// And the socket is gone for good.
	if _, err := c.Invoke(context.Background(), "/test.Service/Echo", nil); CodeOf(err) != Unavailable {
		t.Fatalf("Invoke without a server = %v, want Unavailable", err)
	}
	if _, err := c.NewStream(context.Background(), "/x/y", nil); CodeOf(err) != Unavailable {
		t.Fatalf("NewStream without a server = %v, want Unavailable", err)
	}
	c.Close()
	if _, err := c.Invoke(context.Background(), "/x/y", nil); CodeOf(err) != Canceled {
		t.Fatalf("Invoke after Close = %v, want Canceled", err)
	}
}

// serveHTTP2 runs a plain net/http h2c server, to send what a gRPC server
// never would.
func serveHTTP2(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "h2.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func grpcFrame(flag byte, n uint32, body string) []byte {
	b := make([]byte, 5, 5+len(body))
	b[0] = flag
	binary.BigEndian.PutUint32(b[1:], n)
	return append(b, body...)
}

func TestMisbehavingServer(t *testing.T) {
	tests := []struct {
		name string
		h    http.HandlerFunc
		code Code
		text string
	}{
		{"http 404", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, Unimplemented, "404"},
		{"http 503", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }, Unavailable, "503"},
		{"http 500", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }, Unknown, "500"},
		{"not grpc", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) }, Unknown, "content-type"},
		{"compressed", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Write(grpcFrame(1, 1, "x"))
		}, Internal, "compressed"},
		{"huge", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Write(grpcFrame(0, MaxMessageSize+1, ""))
		}, ResourceExhausted, "exceeds"},
		{"truncated", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Write(grpcFrame(0, 10, "abc"))
		}, Unavailable, ""},
		{"no status", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Write(grpcFrame(0, 1, "x"))
		}, Unavailable, "without a status"},
		{"bad status", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "x")
		}, Internal, "malformed grpc-status"},
		{"status in headers with http error", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Grpc-Status", "5")
			w.Header().Set("Grpc-Message", "gone")
			w.WriteHeader(500)
		}, NotFound, "gone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got http.Header
			sock := serveHTTP2(t, func(w http.ResponseWriter, r *http.Request) {
				got = r.Header.Clone()
				got.Set(":path", r.URL.Path)
				got.Set(":proto", r.Proto)
				tt.h(w, r)
			})
			c := dial(t, sock, map[string]string{"containerd-namespace": "k8s.io"})
			_, err := c.Invoke(context.Background(), "/a.B/C", []byte("req"))
			if CodeOf(err) != tt.code || !strings.Contains(fmt.Sprint(err), tt.text) {
				t.Fatalf("Invoke = %v, want code %v with %q", err, tt.code, tt.text)
			}
			// What a gRPC server needs to see.
			want := map[string]string{
				":path": "/a.B/C", ":proto": "HTTP/2.0", "Content-Type": "application/grpc",
				"Te": "trailers", "Containerd-Namespace": "k8s.io",
			}
			for k, v := range want {
				if got.Get(k) != v {
					t.Errorf("request header %s = %q, want %q", k, got.Get(k), v)
				}
			}
		})
	}
}

func TestCode(t *testing.T) {
	tests := []struct {
		err  error
		code Code
	}{
		{nil, OK},
		{&Error{Code: NotFound}, NotFound},
		{fmt.Errorf("wrapped: %w", &Error{Code: Unimplemented}), Unimplemented},
		{errors.New("plain"), Unknown},
		{os.ErrNotExist, Unknown},
	}
	for _, tt := range tests {
		if got := CodeOf(tt.err); got != tt.code {
			t.Errorf("CodeOf(%v) = %v, want %v", tt.err, got, tt.code)
		}
	}
	if !IsNotFound(&Error{Code: NotFound}) || IsNotFound(nil) || !IsUnimplemented(&Error{Code: Unimplemented}) {
		t.Error("IsNotFound/IsUnimplemented")
	}
	for c, name := range map[Code]string{OK: "OK", Unavailable: "Unavailable", Unauthenticated: "Unauthenticated", 17: "Code(17)"} {
		if c.String() != name {
			t.Errorf("%d.String() = %q, want %q", uint32(c), c.String(), name)
		}
	}
}

func TestSocketPath(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		endpoint string
		want     string // "" = error
	}{
		{"/run/containerd/containerd.sock", "/run/containerd/containerd.sock"},
		{"unix:///run/containerd/containerd.sock", "/run/containerd/containerd.sock"},
		{"unix:///var/run/../run/crio/crio.sock", "/var/run/crio/crio.sock"},
		{"rel/x.sock", filepath.Join(wd, "rel/x.sock")},
		{"unix://rel/x.sock", filepath.Join(wd, "rel/x.sock")},
		{"tcp://127.0.0.1:1234", ""},
		{"npipe:////./pipe/containerd-containerd", ""},
		{"", ""},
		{"unix://", ""},
	}
	for _, tt := range tests {
		got, err := SocketPath(tt.endpoint)
		if tt.want == "" {
			if err == nil {
				t.Errorf("SocketPath(%q) = %q, want an error", tt.endpoint, got)
			}
			if _, err := Dial(tt.endpoint, nil); err == nil {
				t.Errorf("Dial(%q) succeeded", tt.endpoint)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("SocketPath(%q) = %q, %v; want %q", tt.endpoint, got, err, tt.want)
		}
	}
}
