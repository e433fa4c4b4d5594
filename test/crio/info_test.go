package crio

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/runtime/cri"
)

// recorded is a CRI runtime service that answers verbose status calls with
// documents recorded from CRI-O 1.34.0 (testdata/), so that what Patu reads
// of CRI-O's shape is checked on every run, also where CRI-O is not
// installed and TestCRIO skips.
type recorded struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	sandboxInfo   map[string]string // sandbox id -> "info"
	containerInfo map[string]string // container id -> "info"
}

func (r *recorded) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "cri-o", RuntimeVersion: "1.34.0", RuntimeApiVersion: "v1"}, nil
}

func (r *recorded) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	info, ok := r.sandboxInfo[req.GetPodSandboxId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "could not find pod %q", req.GetPodSandboxId())
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: &runtimeapi.PodSandboxStatus{Id: req.GetPodSandboxId()}}
	if req.GetVerbose() {
		resp.Info = map[string]string{"info": info}
	}
	return resp, nil
}

func (r *recorded) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	info, ok := r.containerInfo[req.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "could not find container %q", req.GetContainerId())
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{
		Id: req.GetContainerId(), State: runtimeapi.ContainerState_CONTAINER_RUNNING,
	}}
	if req.GetVerbose() {
		resp.Info = map[string]string{"info": info}
	}
	return resp, nil
}

func readFixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRecordedInfo reads CRI-O's verbose status through Patu's CRI client.
// A sandbox without a pause process (kubelet's default) has no "pid" and
// no "config": the watcher then knows the pod by its pinned netns path and
// attaches each container's cgroup (the per-pod cgroup mode needs the
// sandbox's pid or cgroup_parent, which CRI-O does not report).
func TestRecordedInfo(t *testing.T) {
	const (
		sandbox = "8eb37a7ce08f04ae51646f14bc5fae1b4ce5317a92e9b51013fb315d9171ac64"
		hostNet = "e0bdb79ffd12c33da97f91f71ed610db890834bfe8177dbc56cd92a5c7fb9ee2"
		ctr     = "6da1539a7977b45cee106be96dce9cca3a85b98157aa7461eeb4495ed660fe76"
	)
	srv := &recorded{
		sandboxInfo: map[string]string{
			sandbox: readFixture(t, "crio-1.34.0-sandbox-noinfra.json"),
			hostNet: readFixture(t, "crio-1.34.0-sandbox-hostnet.json"),
		},
		containerInfo: map[string]string{ctr: readFixture(t, "crio-1.34.0-container-running.json")},
	}
	sock := filepath.Join(t.TempDir(), "crio.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(g, srv)
	go g.Serve(ln)
	t.Cleanup(g.Stop)

	ctx := context.Background()
	c, err := cri.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if name, _ := c.RuntimeName(); name != "cri-o" || c.LegacyContainerd() {
		t.Fatalf("runtime %q: want cri-o, not legacy containerd", name)
	}

	tests := []struct {
		id   string
		want cri.SandboxInfo
	}{
		{sandbox, cri.SandboxInfo{
			Netns:       "/tmp/crio-lab/run/ns/netns/23752e80-ef45-4f48-9ff8-949300f4bcf6",
			CgroupsPath: "/patu-crio/pod-a/crio-" + sandbox,
		}},
		// A host-network pod: CRI-O pins the node's namespace like any
		// other, and its status has no IP, which keeps the watcher away.
		{hostNet, cri.SandboxInfo{
			Netns:       "/tmp/crio-lab/run/ns/netns/04154b0e-ed1e-4ffe-ae12-36e5466d6613",
			CgroupsPath: "/patu-crio/pod-h/crio-" + hostNet,
		}},
	}
	for _, tt := range tests {
		got, err := c.SandboxInfo(ctx, tt.id)
		if err != nil {
			t.Fatal(err)
		}
		if got != tt.want {
			t.Errorf("sandbox %s: got %+v, want %+v", tt.id[:12], got, tt.want)
		}
	}
	pid, err := c.ContainerPid(ctx, ctr)
	if err != nil || pid != 9288 {
		t.Errorf("container pid %d, %v: want 9288", pid, err)
	}
}
