package cri

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/runtime"
)

func TestDial(t *testing.T) {
	sock, _ := serve(t, &fakeRuntime{})
	bare, _ := serve(t, nil) // a gRPC server without the CRI service
	notListening := filepath.Join(t.TempDir(), "stale.sock")
	if l, err := net.Listen("unix", notListening); err != nil {
		t.Fatal(err)
	} else {
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close() // leaves the file, like a crashed runtime
	}

	tests := []struct {
		name        string
		endpoint    string
		wantErr     string // substring; "" = success
		unsupported bool
	}{
		{"plain path", sock, "", false},
		{"unix URL", "unix://" + sock, "", false},
		{"no CRI service", bare, "no CRI v1 runtime service", true},
		{"socket without listener", notListening, notListening, false},
		{"missing socket", filepath.Join(t.TempDir(), "none.sock"), "none.sock", false},
		{"tcp refused", "tcp://127.0.0.1:1", "only unix sockets", false},
		{"empty", "", "empty runtime endpoint", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := Dial(ctx, tt.endpoint)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if n, v := c.RuntimeName(); n != "containerd" || v != "v2.4.2" {
					t.Errorf("RuntimeName() = %q, %q", n, v)
				}
				if c.Endpoint() != sock {
					t.Errorf("Endpoint() = %q, want %q", c.Endpoint(), sock)
				}
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
			if errors.Is(err, runtime.ErrUnsupported) != tt.unsupported {
				t.Errorf("errors.Is(%q, ErrUnsupported) = %v", err, !tt.unsupported)
			}
		})
	}
}

func TestSandboxes(t *testing.T) {
	created := time.Date(2025, 11, 26, 23, 42, 49, 123456789, time.UTC)
	meta := func(name string) *runtimeapi.PodSandboxMetadata {
		return &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name}
	}
	f := &fakeRuntime{
		sandboxes: []*runtimeapi.PodSandbox{
			{Id: "sb-ready", Metadata: meta("ready"), State: runtimeapi.PodSandboxState_SANDBOX_READY, CreatedAt: created.UnixNano(),
				Labels: map[string]string{"app": "ready"}, Annotations: map[string]string{"patu.io/test": "yes"}},
			{Id: "sb-notready", Metadata: meta("notready"), State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY, CreatedAt: created.UnixNano()},
			{Id: "sb-hostnet", Metadata: meta("hostnet"), State: runtimeapi.PodSandboxState_SANDBOX_READY, CreatedAt: created.UnixNano()},
			// listed, then removed before its status call
			{Id: "sb-gone", Metadata: meta("gone"), State: runtimeapi.PodSandboxState_SANDBOX_READY, CreatedAt: created.UnixNano()},
			// ready when listed, stopped by the time of the status call
			{Id: "sb-stopping", Metadata: meta("stopping"), State: runtimeapi.PodSandboxState_SANDBOX_READY, CreatedAt: created.UnixNano()},
		},
		sandboxStatus: map[string]*runtimeapi.PodSandboxStatus{
			"sb-ready": {Id: "sb-ready", State: runtimeapi.PodSandboxState_SANDBOX_READY, Network: &runtimeapi.PodSandboxNetworkStatus{
				Ip: "10.203.1.2", AdditionalIps: []*runtimeapi.PodIP{{Ip: "fd00:203::2"}, {Ip: "not-an-ip"}},
			}},
			"sb-notready": {Id: "sb-notready", State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY, Network: &runtimeapi.PodSandboxNetworkStatus{Ip: "10.203.1.9"}},
			"sb-hostnet":  {Id: "sb-hostnet", State: runtimeapi.PodSandboxState_SANDBOX_READY, Network: &runtimeapi.PodSandboxNetworkStatus{}},
			"sb-stopping": {Id: "sb-stopping", State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY, Network: &runtimeapi.PodSandboxNetworkStatus{}},
		},
	}
	sock, _ := serve(t, f)
	got, err := dial(t, sock).Sandboxes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Sandbox{
		{ID: "sb-ready", Name: "ready", Namespace: "default", UID: "uid-ready", Ready: true,
			IPs:    []netip.Addr{netip.MustParseAddr("10.203.1.2"), netip.MustParseAddr("fd00:203::2")},
			Labels: map[string]string{"app": "ready"}, Annotations: map[string]string{"patu.io/test": "yes"}, CreatedAt: created},
		// not ready: no status call, so no IPs even though the runtime has one
		{ID: "sb-notready", Name: "notready", Namespace: "default", UID: "uid-notready", CreatedAt: created},
		{ID: "sb-hostnet", Name: "hostnet", Namespace: "default", UID: "uid-hostnet", Ready: true, CreatedAt: created},
		{ID: "sb-stopping", Name: "stopping", Namespace: "default", UID: "uid-stopping", CreatedAt: created},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d sandboxes, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if !got[i].CreatedAt.Equal(want[i].CreatedAt) {
			t.Errorf("%s: CreatedAt %v, want %v", want[i].ID, got[i].CreatedAt, want[i].CreatedAt)
		}
		got[i].CreatedAt = want[i].CreatedAt
		if len(got[i].Labels) == 0 {
			got[i].Labels = nil
		}
		if len(got[i].Annotations) == 0 {
			got[i].Annotations = nil
		}
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("sandbox %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

// TestSandbox: one sandbox by id, through the list's id filter; an
// unknown id is ErrNotFound.
func TestSandbox(t *testing.T) {
	f := &fakeRuntime{
		sandboxes: []*runtimeapi.PodSandbox{
			{Id: "sb-a", Metadata: &runtimeapi.PodSandboxMetadata{Name: "a", Namespace: "ns"}, State: runtimeapi.PodSandboxState_SANDBOX_READY},
			{Id: "sb-b", Metadata: &runtimeapi.PodSandboxMetadata{Name: "b", Namespace: "ns"}, State: runtimeapi.PodSandboxState_SANDBOX_READY},
		},
		sandboxStatus: map[string]*runtimeapi.PodSandboxStatus{
			"sb-a": {Id: "sb-a", State: runtimeapi.PodSandboxState_SANDBOX_READY, Network: &runtimeapi.PodSandboxNetworkStatus{Ip: "10.203.1.2"}},
			"sb-b": {Id: "sb-b", State: runtimeapi.PodSandboxState_SANDBOX_READY, Network: &runtimeapi.PodSandboxNetworkStatus{Ip: "10.203.1.3"}},
		},
	}
	sock, _ := serve(t, f)
	c := dial(t, sock)
	s, err := c.Sandbox(context.Background(), "sb-b")
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "b" || !s.Ready || len(s.IPs) != 1 || s.IPs[0] != netip.MustParseAddr("10.203.1.3") {
		t.Errorf("Sandbox(sb-b) = %+v", s)
	}
	if _, err := c.Sandbox(context.Background(), "sb-x"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("unknown sandbox: %v, want ErrNotFound", err)
	}
}

// TestRuntimeRestart: a runtime that restarts on the same socket is
// reached again by the same Client (grpc-go reconnects with its own
// backoff); while it is away, calls fail instead of hanging.
func TestRuntimeRestart(t *testing.T) {
	f := &fakeRuntime{
		sandboxes:     []*runtimeapi.PodSandbox{{Id: "sb-a", Metadata: &runtimeapi.PodSandboxMetadata{Name: "a"}, State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}},
		sandboxStatus: map[string]*runtimeapi.PodSandboxStatus{},
	}
	sock, srv := serve(t, f)
	c := dial(t, sock)
	if _, err := c.Sandboxes(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Sandboxes(ctx); err == nil {
		t.Fatal("Sandboxes succeeded with the runtime gone")
	} else if ctx.Err() != nil {
		t.Fatalf("Sandboxes hung until the deadline with the runtime gone: %v", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv2, f)
	go srv2.Serve(l)
	t.Cleanup(srv2.Stop)
	// Back within grpc's reconnect backoff (capped at 5 s by grpcdial).
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := c.Sandboxes(context.Background())
		if err == nil {
			if len(got) != 1 || got[0].ID != "sb-a" {
				t.Fatalf("Sandboxes after the restart = %+v", got)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Sandboxes still failing 10 s after the runtime came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSandboxesListError(t *testing.T) {
	sock, srv := serve(t, &fakeRuntime{})
	c := dial(t, sock)
	srv.Stop()
	if _, err := c.Sandboxes(context.Background()); err == nil || !strings.Contains(err.Error(), "cri list pod sandboxes") {
		t.Fatalf("Sandboxes after the runtime went away: %v", err)
	}
}

func TestSandboxInfo(t *testing.T) {
	const (
		netnsDir = "/tmp/rtad-lab/containerd/state/io.containerd.grpc.v1.cri/netns/"
	)
	tests := []struct {
		name    string
		info    string // "" = the runtime sends no info
		want    SandboxInfo
		wantErr string
	}{
		{
			name: "containerd 1.6 with cgroup_parent",
			info: "containerd-1.6.20-sandbox-withparent.json",
			want: SandboxInfo{Pid: 7873, Netns: netnsDir + "cni-e51ed879-5251-60bd-734f-c590c63f66d6",
				CgroupParent: "/patu-pods/uid-withparent",
				CgroupsPath:  "/patu-pods/uid-withparent/6f5a8584e0f3e3b42ed80878bdb67ae35b01de11389c82b1a17e53c74afa62b3"},
		},
		{
			name: "containerd 1.6 without cgroup_parent",
			info: "containerd-1.6.20-sandbox-noparent.json",
			want: SandboxInfo{Pid: 8049, Netns: netnsDir + "cni-87488420-9e31-cce1-c777-6c26abc06ab0",
				CgroupsPath: "/k8s.io/8d4efa7172da609bb532d4f7091279f470cab8c7026d21ba9388b8b222b2c3a2"},
		},
		{
			name: "containerd 1.6 host network",
			info: "containerd-1.6.20-sandbox-hostnet.json",
			want: SandboxInfo{Pid: 8781, CgroupsPath: "/k8s.io/51ff9dde07716c621d2935eaeb8727d15dde219ce0618b63ddf1368385f8fcae"},
		},
		{
			name: "containerd 1.6 stopped: netns closed",
			info: "containerd-1.6.20-sandbox-stopped.json",
			want: SandboxInfo{CgroupsPath: "/k8s.io/03582c20ce768fec463e281ec2ad9141271942ffe5743c7389afe3ed498b47d9"},
		},
		{
			name: "containerd 2.4.2 with cgroup_parent",
			info: "containerd-2.4.2-sandbox-withparent.json",
			want: SandboxInfo{Pid: 13520, Netns: netnsDir + "cni-4c63bdbb-3e70-2db5-9c53-77a9e303c7b6",
				CgroupParent: "/patu-pods/uid-withparent",
				CgroupsPath:  "/patu-pods/uid-withparent/7c95e43f025ce2cdbb958f9c2508709a07cf5ed632411bd706f4f1d53388168a"},
		},
		{
			name: "containerd 2.4.2 without cgroup_parent",
			info: "containerd-2.4.2-sandbox-noparent.json",
			want: SandboxInfo{Pid: 13636, Netns: netnsDir + "cni-0c0fbfe2-ce18-a5fa-02c3-083248ab660f",
				CgroupsPath: "/k8s.io/38476783e239abff2373c757e8acf0213a6b67ba4ea09477e39f606a74c1ff52"},
		},
		{
			name: "containerd 2.4.2 host network",
			info: "containerd-2.4.2-sandbox-hostnet.json",
			want: SandboxInfo{Pid: 13739, CgroupsPath: "/k8s.io/973c2d7cb13357ccd46a6431a3cf0c7a573965e459309932d791eef34c056306"},
		},
		{
			name: "containerd 2.4.2 stopped: netns closed",
			info: "containerd-2.4.2-sandbox-stopped.json",
			want: SandboxInfo{CgroupsPath: "/k8s.io/0b8b51c5c56f6955bc253ac448c70ab6f56945afcf034a644ab1cb68add848b3"},
		},
		{
			// 2.x after the sandbox's shim died: no runtime spec, the
			// netns only in the versioned sandbox metadata
			// (toDeletedCRISandboxInfo).
			name: "containerd 2.x shim gone",
			info: `{"pid":0,"processStatus":"deleted","netNamespaceClosed":false,` +
				`"config":{"metadata":{"name":"p"},"linux":{"cgroup_parent":"/patu-pods/u"}},"runtimeSpec":null,` +
				`"sandboxMetadata":{"Version":"v1","Metadata":{"ID":"x","NetNSPath":"/var/run/netns/cni-1"}}}`,
			want: SandboxInfo{Netns: "/var/run/netns/cni-1", CgroupParent: "/patu-pods/u"},
		},
		{
			// A network namespace entry without a path: the OCI runtime
			// made a fresh one, the sandbox process's own. CRI-O's info
			// has this shape ("pid", "runtimeSpec", "image").
			name: "netns entry without path",
			info: `{"image":"pause","pid":77,"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}],` +
				`"cgroupsPath":"kubepods-besteffort-pod1.slice:crio:abc"}}}`,
			want: SandboxInfo{Pid: 77, Netns: "/proc/77/ns/net", CgroupsPath: "kubepods-besteffort-pod1.slice:crio:abc"},
		},
		{name: "no verbose info", info: "", wantErr: "no verbose info"},
		{name: "not JSON", info: `{"pid":`, wantErr: "decode verbose info"},
	}
	f := &fakeRuntime{sandboxStatus: map[string]*runtimeapi.PodSandboxStatus{}, sandboxInfo: map[string]string{}}
	for i, tt := range tests {
		id := string(rune('a' + i))
		f.sandboxStatus[id] = &runtimeapi.PodSandboxStatus{Id: id}
		switch {
		case strings.HasSuffix(tt.info, ".json"):
			f.sandboxInfo[id] = fixture(t, tt.info)
		case tt.info != "":
			f.sandboxInfo[id] = tt.info
		}
	}
	sock, _ := serve(t, f)
	c := dial(t, sock)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.SandboxInfo(context.Background(), string(rune('a'+i)))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SandboxInfo() = %+v, %v; want error with %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("SandboxInfo():\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
	t.Run("removed sandbox", func(t *testing.T) {
		_, err := c.SandboxInfo(context.Background(), "gone")
		if !errors.Is(err, runtime.ErrNotFound) {
			t.Fatalf("SandboxInfo(gone) = %v, want ErrNotFound", err)
		}
	})
}

func TestContainers(t *testing.T) {
	created := time.Date(2025, 11, 26, 23, 42, 50, 0, time.UTC)
	f := &fakeRuntime{containers: []*runtimeapi.Container{
		{Id: "c1", PodSandboxId: "sb1", Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, State: runtimeapi.ContainerState_CONTAINER_RUNNING, CreatedAt: created.UnixNano()},
		{Id: "c2", PodSandboxId: "sb1", Metadata: &runtimeapi.ContainerMetadata{Name: "init"}, State: runtimeapi.ContainerState_CONTAINER_EXITED, CreatedAt: created.UnixNano()},
		{Id: "c3", PodSandboxId: "sb2", Metadata: &runtimeapi.ContainerMetadata{Name: "new"}, State: runtimeapi.ContainerState_CONTAINER_CREATED},
		{Id: "c4", PodSandboxId: "sb2", Metadata: &runtimeapi.ContainerMetadata{Name: "odd"}, State: runtimeapi.ContainerState_CONTAINER_UNKNOWN},
	}}
	sock, _ := serve(t, f)
	got, err := dial(t, sock).Containers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Container{
		{ID: "c1", SandboxID: "sb1", Name: "app", State: StateRunning, CreatedAt: created},
		{ID: "c2", SandboxID: "sb1", Name: "init", State: StateExited, CreatedAt: created},
		{ID: "c3", SandboxID: "sb2", Name: "new", State: StateCreated},
		{ID: "c4", SandboxID: "sb2", Name: "odd", State: StateUnknown},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].SandboxID != want[i].SandboxID || got[i].Name != want[i].Name ||
			got[i].State != want[i].State || !got[i].CreatedAt.Equal(want[i].CreatedAt) {
			t.Errorf("container %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	for s, name := range map[ContainerState]string{StateCreated: "created", StateRunning: "running", StateExited: "exited", StateUnknown: "unknown", 42: "unknown"} {
		if s.String() != name {
			t.Errorf("%d.String() = %q, want %q", int(s), s.String(), name)
		}
	}
}

func TestContainerPid(t *testing.T) {
	running := &runtimeapi.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_RUNNING}
	exited := &runtimeapi.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_EXITED}
	tests := []struct {
		name    string
		status  *runtimeapi.ContainerStatus // nil = unknown to the runtime
		info    string
		want    int
		wantErr error
		errText string
	}{
		{name: "containerd 1.6 running", status: running, info: fixture(t, "containerd-1.6.20-container-withparent.json"), want: 7927},
		{name: "containerd 2.4.2 running", status: running, info: fixture(t, "containerd-2.4.2-container-withparent.json"), want: 13567},
		{name: "containerd 1.6 exited", status: exited, info: fixture(t, "containerd-1.6.20-container-stopped.json"), want: 0},
		{name: "containerd 2.4.2 exited", status: exited, info: fixture(t, "containerd-2.4.2-container-stopped.json"), want: 0},
		// an exited container whose info still holds the old pid must not
		// hand it out: the number may belong to another process by now
		{name: "exited with stale pid", status: exited, info: `{"pid":4242}`, want: 0},
		{name: "running without info", status: running, errText: "no verbose info"},
		{name: "removed", wantErr: runtime.ErrNotFound},
	}
	f := &fakeRuntime{containerStatus: map[string]*runtimeapi.ContainerStatus{}, containerInfo: map[string]string{}}
	for _, tt := range tests {
		if tt.status != nil {
			f.containerStatus[tt.name] = tt.status
		}
		if tt.info != "" {
			f.containerInfo[tt.name] = tt.info
		}
	}
	sock, _ := serve(t, f)
	c := dial(t, sock)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.ContainerPid(context.Background(), tt.name)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ContainerPid() = %d, %v; want %v", got, err, tt.wantErr)
				}
			case tt.errText != "":
				if err == nil || !strings.Contains(err.Error(), tt.errText) {
					t.Fatalf("ContainerPid() = %d, %v; want error with %q", got, err, tt.errText)
				}
			case err != nil:
				t.Fatal(err)
			case got != tt.want:
				t.Errorf("ContainerPid() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestLegacyContainerd(t *testing.T) {
	tests := []struct {
		name, version string
		want          bool
	}{
		{"containerd", "1.6.20~ds1", true}, // Debian 12
		{"containerd", "v1.7.23-k3s1", true},
		{"containerd", "v1.7.2", true},
		{"containerd", "2.4.2+unknown", false}, // go install
		{"containerd", "v2.0.0", false},
		{"containerd", "v10.1.0", false},
		{"cri-o", "1.30.0", false},
	}
	for _, tt := range tests {
		if got := legacyContainerd(tt.name, tt.version); got != tt.want {
			t.Errorf("legacyContainerd(%q, %q) = %v, want %v", tt.name, tt.version, got, tt.want)
		}
	}
}
