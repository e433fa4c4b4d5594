package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ContainerState is the CRI state of a container.
type ContainerState int

// Container states, as in the CRI.
const (
	StateUnknown ContainerState = iota
	StateCreated
	StateRunning
	StateExited
)

// String returns "created", "running", "exited" or "unknown".
func (s ContainerState) String() string {
	switch s {
	case StateCreated:
		return "created"
	case StateRunning:
		return "running"
	case StateExited:
		return "exited"
	}
	return "unknown"
}

func containerState(s runtimeapi.ContainerState) ContainerState {
	switch s {
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		return StateCreated
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		return StateRunning
	case runtimeapi.ContainerState_CONTAINER_EXITED:
		return StateExited
	}
	return StateUnknown
}

// Container is an application container as the runtime lists it.
type Container struct {
	ID        string
	SandboxID string
	Name      string // container name from the pod spec
	State     ContainerState
	CreatedAt time.Time
}

// Containers lists every container, in any state.
func (c *Client) Containers(ctx context.Context) ([]Container, error) {
	resp, err := c.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, fmt.Errorf("cri list containers: %w", err)
	}
	out := make([]Container, 0, len(resp.GetContainers()))
	for _, ct := range resp.GetContainers() {
		out = append(out, Container{
			ID:        ct.GetId(),
			SandboxID: ct.GetPodSandboxId(),
			Name:      ct.GetMetadata().GetName(),
			State:     containerState(ct.GetState()),
			CreatedAt: nanos(ct.GetCreatedAt()),
		})
	}
	return out, nil
}

// ContainerPid returns the host pid of the container's init process from
// its verbose status, or 0 when the container is not running. A removed
// container gives an error for which errors.Is(err, runtime.ErrNotFound)
// holds.
func (c *Client) ContainerPid(ctx context.Context, id string) (int, error) {
	st, err := c.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("cri container status %s: %w", id, notFound(err))
	}
	// containerd can keep the pid of an exited process in its info.
	if st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return 0, nil
	}
	pid, err := parseContainerPid(st.GetInfo())
	if err != nil {
		return 0, fmt.Errorf("cri container %s: %w", id, err)
	}
	return pid, nil
}

// parseContainerPid reads "pid" from the verbose "info" document:
// containerd's ContainerInfo (1.6 and 2.x) and CRI-O's both have it.
func parseContainerPid(m map[string]string) (int, error) {
	raw, ok := m["info"]
	if !ok {
		return 0, errNoInfo
	}
	var j struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(raw), &j); err != nil {
		return 0, fmt.Errorf("decode verbose info: %w", err)
	}
	return j.Pid, nil
}
