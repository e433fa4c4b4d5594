package cri

import (
	"fmt"

	"github.com/patu-dev/patu/runtime/internal/pbwire"
)

// This file encodes and decodes the CRI v1 messages the client uses, in
// protobuf's wire format. Field numbers are those of k8s.io/cri-api
// pkg/apis/runtime/v1/api.proto; the tests check them against the
// generated code by running a real gRPC server with the cri-api types.

const service = "/runtime.v1.RuntimeService/"

const (
	methodVersion            = service + "Version"
	methodListPodSandbox     = service + "ListPodSandbox"
	methodPodSandboxStatus   = service + "PodSandboxStatus"
	methodListContainers     = service + "ListContainers"
	methodContainerStatus    = service + "ContainerStatus"
	methodGetContainerEvents = service + "GetContainerEvents"
)

// CRI enum values. proto3 leaves a field with value 0 out, so a missing
// state means SANDBOX_READY or CONTAINER_CREATED.
const (
	sandboxReady = 0 // PodSandboxState SANDBOX_READY; NOTREADY is 1

	containerCreated = 0 // ContainerState
	containerRunning = 1
	containerExited  = 2

	eventCreated = 0 // ContainerEventType
	eventStarted = 1
	eventStopped = 2
	eventDeleted = 3
)

// VersionRequest {string version = 1}: the CRI version the client speaks.
func versionRequest() []byte {
	return pbwire.AppendString(nil, 1, "v1")
}

// PodSandboxStatusRequest {string pod_sandbox_id = 1; bool verbose = 2}, and
// ContainerStatusRequest {string container_id = 1; bool verbose = 2}.
func statusRequest(id string, verbose bool) []byte {
	return pbwire.AppendBool(pbwire.AppendString(nil, 1, id), 2, verbose)
}

type versionResponse struct {
	RuntimeName    string // 2
	RuntimeVersion string // 3
}

// decodeVersionResponse decodes VersionResponse {string version = 1;
// string runtime_name = 2; string runtime_version = 3; string runtime_api_version = 4}.
func decodeVersionResponse(b []byte) (versionResponse, error) {
	var v versionResponse
	err := pbwire.Each(b, func(f pbwire.Field) error {
		switch {
		case f.Len(2):
			v.RuntimeName = string(f.Bytes)
		case f.Len(3):
			v.RuntimeVersion = string(f.Bytes)
		}
		return nil
	})
	return v, wrap("VersionResponse", err)
}

// podSandbox is PodSandbox {string id = 1; PodSandboxMetadata metadata = 2;
// PodSandboxState state = 3; int64 created_at = 4; map labels = 5;
// map annotations = 6}.
type podSandbox struct {
	ID                   string
	Name, UID, Namespace string // metadata {name = 1; uid = 2; namespace = 3}
	State                uint64
	CreatedAt            int64
	Labels, Annotations  map[string]string
}

// decodeListPodSandboxResponse decodes ListPodSandboxResponse {repeated PodSandbox items = 1}.
func decodeListPodSandboxResponse(b []byte) ([]podSandbox, error) {
	var out []podSandbox
	err := pbwire.Each(b, func(f pbwire.Field) error {
		if !f.Len(1) {
			return nil
		}
		var p podSandbox
		err := pbwire.Each(f.Bytes, func(f pbwire.Field) error {
			switch {
			case f.Len(1):
				p.ID = string(f.Bytes)
			case f.Len(2):
				return pbwire.Each(f.Bytes, func(f pbwire.Field) error {
					switch {
					case f.Len(1):
						p.Name = string(f.Bytes)
					case f.Len(2):
						p.UID = string(f.Bytes)
					case f.Len(3):
						p.Namespace = string(f.Bytes)
					}
					return nil
				})
			case f.Varint(3):
				p.State = f.Int
			case f.Varint(4):
				p.CreatedAt = int64(f.Int)
			case f.Len(5):
				return pbwire.AddMapEntry(&p.Labels, f.Bytes)
			case f.Len(6):
				return pbwire.AddMapEntry(&p.Annotations, f.Bytes)
			}
			return nil
		})
		out = append(out, p)
		return err
	})
	return out, wrap("ListPodSandboxResponse", err)
}

// sandboxStatus holds what the client reads of PodSandboxStatusResponse
// {PodSandboxStatus status = 1; map<string, string> info = 2}.
type sandboxStatus struct {
	State uint64   // status.state (3)
	IPs   []string // status.network (5): ip (1), then additional_ips (2) [PodIP {ip = 1}]
	Info  map[string]string
}

func decodePodSandboxStatusResponse(b []byte) (sandboxStatus, error) {
	var s sandboxStatus
	var ip string
	var more []string
	err := pbwire.Each(b, func(f pbwire.Field) error {
		switch {
		case f.Len(1):
			return pbwire.Each(f.Bytes, func(f pbwire.Field) error {
				switch {
				case f.Varint(3):
					s.State = f.Int
				case f.Len(5):
					return pbwire.Each(f.Bytes, func(f pbwire.Field) error {
						switch {
						case f.Len(1):
							ip = string(f.Bytes)
						case f.Len(2):
							return pbwire.Each(f.Bytes, func(f pbwire.Field) error {
								if f.Len(1) {
									more = append(more, string(f.Bytes))
								}
								return nil
							})
						}
						return nil
					})
				}
				return nil
			})
		case f.Len(2):
			return pbwire.AddMapEntry(&s.Info, f.Bytes)
		}
		return nil
	})
	if ip != "" {
		s.IPs = append(s.IPs, ip)
	}
	s.IPs = append(s.IPs, more...)
	return s, wrap("PodSandboxStatusResponse", err)
}

// container is Container {string id = 1; string pod_sandbox_id = 2;
// ContainerMetadata metadata = 3 {name = 1}; ContainerState state = 6;
// int64 created_at = 7}.
type container struct {
	ID, SandboxID, Name string
	State               uint64
	CreatedAt           int64
}

// decodeListContainersResponse decodes ListContainersResponse {repeated Container containers = 1}.
func decodeListContainersResponse(b []byte) ([]container, error) {
	var out []container
	err := pbwire.Each(b, func(f pbwire.Field) error {
		if !f.Len(1) {
			return nil
		}
		var c container
		err := pbwire.Each(f.Bytes, func(f pbwire.Field) error {
			switch {
			case f.Len(1):
				c.ID = string(f.Bytes)
			case f.Len(2):
				c.SandboxID = string(f.Bytes)
			case f.Len(3):
				return pbwire.Each(f.Bytes, func(f pbwire.Field) error {
					if f.Len(1) {
						c.Name = string(f.Bytes)
					}
					return nil
				})
			case f.Varint(6):
				c.State = f.Int
			case f.Varint(7):
				c.CreatedAt = int64(f.Int)
			}
			return nil
		})
		out = append(out, c)
		return err
	})
	return out, wrap("ListContainersResponse", err)
}

// containerStatus holds what the client reads of ContainerStatusResponse
// {ContainerStatus status = 1 {state = 3}; map<string, string> info = 2}.
type containerStatus struct {
	State uint64
	Info  map[string]string
}

func decodeContainerStatusResponse(b []byte) (containerStatus, error) {
	var s containerStatus
	err := pbwire.Each(b, func(f pbwire.Field) error {
		switch {
		case f.Len(1):
			return pbwire.Each(f.Bytes, func(f pbwire.Field) error {
				if f.Varint(3) {
					s.State = f.Int
				}
				return nil
			})
		case f.Len(2):
			return pbwire.AddMapEntry(&s.Info, f.Bytes)
		}
		return nil
	})
	return s, wrap("ContainerStatusResponse", err)
}

// containerEvent is ContainerEventResponse {string container_id = 1;
// ContainerEventType container_event_type = 2; int64 created_at = 3;
// PodSandboxStatus pod_sandbox_status = 4 {string id = 1}}.
type containerEvent struct {
	ContainerID string
	Type        uint64
	CreatedAt   int64
	SandboxID   string // "" when the runtime sent no sandbox status
}

func decodeContainerEvent(b []byte) (containerEvent, error) {
	var e containerEvent
	err := pbwire.Each(b, func(f pbwire.Field) error {
		switch {
		case f.Len(1):
			e.ContainerID = string(f.Bytes)
		case f.Varint(2):
			e.Type = f.Int
		case f.Varint(3):
			e.CreatedAt = int64(f.Int)
		case f.Len(4):
			return pbwire.Each(f.Bytes, func(f pbwire.Field) error {
				if f.Len(1) {
					e.SandboxID = string(f.Bytes)
				}
				return nil
			})
		}
		return nil
	})
	return e, wrap("ContainerEventResponse", err)
}

func wrap(msg string, err error) error {
	if err != nil {
		return fmt.Errorf("decode %s: %w", msg, err)
	}
	return nil
}
