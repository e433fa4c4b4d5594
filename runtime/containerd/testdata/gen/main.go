// Command gen writes the containerd wire fixtures of runtime/containerd's
// tests with containerd's own generated API code and typeurl: serialized
// messages that the tests' fake containerd serves byte for byte, so the
// client is checked over a real gRPC connection against what the encoder
// wrote, not against messages built by the test itself:
//
//	cd runtime/containerd/testdata/gen && go run . -o ..
//
// It is a module of its own (under testdata, so the go tool ignores it for
// Patu) so that it can pin the api version that wrote the fixtures.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"os"
	"path/filepath"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	sandboxID   = "5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"
	containerID = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"
	execID      = "exec-1234"
	ctrID       = "plain-ctr-container" // made with ctr: no CRI labels
)

var base = time.Date(2025, 11, 26, 23, 40, 0, 123456789, time.UTC)

func envelope(i int, ns, topic string, ev proto.Message) []byte {
	a, err := typeurl.MarshalAnyToProto(ev)
	if err != nil {
		log.Fatal(err)
	}
	env := &types.Envelope{
		Timestamp: timestamppb.New(base.Add(time.Duration(i) * time.Second)),
		Namespace: ns,
		Topic:     topic,
		Event:     a,
	}
	b, err := proto.Marshal(env)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

func spec(annotations map[string]string) *anypb.Any {
	// containerd stores the OCI spec as JSON under this type URL.
	b, err := json.Marshal(map[string]any{"ociVersion": "1.1.0", "annotations": annotations})
	if err != nil {
		log.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: b}
}

func delimited(msgs ...[]byte) []byte {
	var out []byte
	for _, m := range msgs {
		out = protowire.AppendBytes(out, m)
	}
	return out
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

func main() {
	dir := flag.String("o", ".", "output directory")
	flag.Parse()
	exited := timestamppb.New(base.Add(30 * time.Second))
	envs := delimited(
		// 0: other namespace: dropped
		envelope(0, "moby", "/tasks/create", &apievents.TaskCreate{ContainerID: "moby-ctr", Pid: 99}),
		// 1: topic the client does not report
		envelope(1, "k8s.io", "/containers/create", &apievents.ContainerCreate{ID: sandboxID, Image: "localhost/patu/pause:3.9"}),
		// 2-3: sandbox task
		envelope(2, "k8s.io", "/tasks/create", &apievents.TaskCreate{
			ContainerID: sandboxID, Bundle: "/run/containerd/io.containerd.runtime.v2.task/k8s.io/" + sandboxID,
			Rootfs: []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"}}},
			IO:     &apievents.TaskIO{Stdout: "/dev/null", Stderr: "/dev/null"}, Pid: 4242,
		}),
		envelope(3, "k8s.io", "/tasks/start", &apievents.TaskStart{ContainerID: sandboxID, Pid: 4242}),
		// 4-5: app container task
		envelope(4, "k8s.io", "/tasks/create", &apievents.TaskCreate{ContainerID: containerID, Pid: 4300}),
		envelope(5, "k8s.io", "/tasks/start", &apievents.TaskStart{ContainerID: containerID, Pid: 4300}),
		// 6-8: an exec in the app container: only its exit is on a subscribed topic, and it is dropped
		envelope(6, "k8s.io", "/tasks/exec-added", &apievents.TaskExecAdded{ContainerID: containerID, ExecID: execID}),
		envelope(7, "k8s.io", "/tasks/exit", &apievents.TaskExit{ContainerID: containerID, ID: execID, Pid: 4400, ExitStatus: 0, ExitedAt: exited}),
		envelope(8, "k8s.io", "/tasks/delete", &apievents.TaskDelete{ContainerID: containerID, ID: execID, Pid: 4400, ExitedAt: exited}),
		// 9: an OOM: not reported
		envelope(9, "k8s.io", "/tasks/oom", &apievents.TaskOOM{ContainerID: containerID}),
		// 10-13: stopp: app exit, app delete, sandbox exit, sandbox delete
		envelope(10, "k8s.io", "/tasks/exit", &apievents.TaskExit{ContainerID: containerID, ID: containerID, Pid: 4300, ExitStatus: 137, ExitedAt: exited}),
		envelope(11, "k8s.io", "/tasks/delete", &apievents.TaskDelete{ContainerID: containerID, Pid: 4300, ExitStatus: 137, ExitedAt: exited}),
		envelope(12, "k8s.io", "/tasks/exit", &apievents.TaskExit{ContainerID: sandboxID, ID: sandboxID, Pid: 4242, ExitStatus: 137, ExitedAt: exited}),
		envelope(13, "k8s.io", "/tasks/delete", &apievents.TaskDelete{ContainerID: sandboxID, Pid: 4242, ExitStatus: 137, ExitedAt: exited}),
		// 14-15: rmp
		envelope(14, "k8s.io", "/containers/delete", &apievents.ContainerDelete{ID: containerID}),
		envelope(15, "k8s.io", "/containers/delete", &apievents.ContainerDelete{ID: sandboxID}),
		// 16: a container made with ctr in k8s.io: not CRI's
		envelope(16, "k8s.io", "/tasks/start", &apievents.TaskStart{ContainerID: ctrID, Pid: 5000}),
		// 17: delete of an id never seen: unclassified
		envelope(17, "k8s.io", "/containers/delete", &apievents.ContainerDelete{ID: "never-seen"}),
	)
	records := delimited(
		mustMarshal(&containersapi.GetContainerResponse{Container: &containersapi.Container{
			ID:      sandboxID,
			Labels:  map[string]string{"io.cri-containerd.kind": "sandbox", "io.kubernetes.pod.name": "smoke-a"},
			Image:   "localhost/patu/pause:3.9",
			Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
			Spec: spec(map[string]string{
				"io.kubernetes.cri.container-type": "sandbox",
				"io.kubernetes.cri.sandbox-id":     sandboxID,
			}),
			Snapshotter: "overlayfs", SnapshotKey: sandboxID,
			CreatedAt: timestamppb.New(base), UpdatedAt: timestamppb.New(base),
		}}),
		mustMarshal(&containersapi.GetContainerResponse{Container: &containersapi.Container{
			ID:      containerID,
			Labels:  map[string]string{"io.cri-containerd.kind": "container", "io.kubernetes.container.name": "bb-a"},
			Image:   "localhost/patu/busybox:1.35",
			Runtime: &containersapi.Container_Runtime{Name: "io.containerd.runc.v2"},
			Spec: spec(map[string]string{
				"io.kubernetes.cri.container-type": "container",
				"io.kubernetes.cri.sandbox-id":     sandboxID,
			}),
			Sandbox: sandboxID,
		}}),
		mustMarshal(&containersapi.GetContainerResponse{Container: &containersapi.Container{
			ID: ctrID, Image: "docker.io/library/busybox:latest",
			Labels: map[string]string{"owner": "someone"},
		}}),
	)
	version := mustMarshal(&versionapi.VersionResponse{Version: "v2.4.2", Revision: "gen"})
	for name, b := range map[string][]byte{"gen-envelopes.pb": envs, "gen-containers.pb": records, "gen-version.pb": version} {
		if err := os.WriteFile(filepath.Join(*dir, name), b, 0o644); err != nil {
			log.Fatal(err)
		}
	}
}
