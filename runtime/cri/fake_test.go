package cri

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeRuntime is a CRI runtime service on a unix socket, the process
// boundary the client is written against. Verbose info documents come
// from testdata/, recorded from real containerd 1.6.20 and 2.4.2.
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer

	mu              sync.Mutex
	sandboxes       []*runtimeapi.PodSandbox
	sandboxStatus   map[string]*runtimeapi.PodSandboxStatus
	sandboxInfo     map[string]string // id -> verbose "info" JSON
	containers      []*runtimeapi.Container
	containerStatus map[string]*runtimeapi.ContainerStatus
	containerInfo   map[string]string

	// events, when set, makes GetContainerEvents send what arrives on it
	// and return when it is closed; when nil the call is Unimplemented,
	// as on containerd 1.6.
	events chan *runtimeapi.ContainerEventResponse
	// subscribed is closed once a GetContainerEvents call is running.
	subscribed chan struct{}
	// verboseRequests counts Verbose:true status calls.
	verboseRequests int
}

func (f *fakeRuntime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "v2.4.2", RuntimeApiVersion: "v1",
	}, nil
}

func (f *fakeRuntime) ListPodSandbox(_ context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := r.GetFilter(); fl != nil {
		if fl.GetId() == "" || fl.GetState() != nil || len(fl.GetLabelSelector()) > 0 {
			return nil, status.Error(codes.InvalidArgument, "fake: only a filter by id is expected")
		}
		var items []*runtimeapi.PodSandbox
		for _, sb := range f.sandboxes {
			if sb.GetId() == fl.GetId() {
				items = append(items, sb)
			}
		}
		return &runtimeapi.ListPodSandboxResponse{Items: items}, nil
	}
	return &runtimeapi.ListPodSandboxResponse{Items: f.sandboxes}, nil
}

func (f *fakeRuntime) PodSandboxStatus(_ context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.sandboxStatus[r.GetPodSandboxId()]
	if !ok {
		// containerd's words, and the code its errdefs conversion gives.
		return nil, status.Errorf(codes.NotFound, "an error occurred when try to find sandbox %q: not found", r.GetPodSandboxId())
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: st}
	if r.GetVerbose() {
		f.verboseRequests++
		if info, ok := f.sandboxInfo[r.GetPodSandboxId()]; ok {
			resp.Info = map[string]string{"info": info}
		}
	}
	return resp, nil
}

func (f *fakeRuntime) ListContainers(_ context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.GetFilter() != nil {
		return nil, status.Error(codes.InvalidArgument, "fake: the client must list all containers")
	}
	return &runtimeapi.ListContainersResponse{Containers: f.containers}, nil
}

func (f *fakeRuntime) ContainerStatus(_ context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.containerStatus[r.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "an error occurred when try to find container %q: not found", r.GetContainerId())
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: st}
	if r.GetVerbose() {
		f.verboseRequests++
		if info, ok := f.containerInfo[r.GetContainerId()]; ok {
			resp.Info = map[string]string{"info": info}
		}
	}
	return resp, nil
}

func (f *fakeRuntime) GetContainerEvents(r *runtimeapi.GetEventsRequest, s grpc.ServerStreamingServer[runtimeapi.ContainerEventResponse]) error {
	if f.events == nil {
		return f.UnimplementedRuntimeServiceServer.GetContainerEvents(r, s)
	}
	if f.subscribed != nil {
		close(f.subscribed)
	}
	for {
		select {
		case ev, ok := <-f.events:
			if !ok {
				return nil // clean end of stream: the client sees EOF
			}
			if err := s.Send(ev); err != nil {
				return err
			}
		case <-s.Context().Done():
			return s.Context().Err()
		}
	}
}

// serve runs srv (a fakeRuntime, or nil for a gRPC server without the CRI
// service) on a socket in a temporary directory and returns the socket
// path and the server, which the test may stop early.
func serve(t *testing.T, f *fakeRuntime) (string, *grpc.Server) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	if f != nil {
		runtimeapi.RegisterRuntimeServiceServer(srv, f)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock, srv
}

// dial connects a Client to sock and closes it with the test.
func dial(t *testing.T, sock string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fixture returns a verbose info document recorded from a real runtime.
func fixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
