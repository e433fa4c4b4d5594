package containerd

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/patu-dev/patu/runtime/internal/pbwire"
)

// This file encodes and decodes the few containerd API messages the client
// uses, in protobuf's wire format. Field numbers are those of
// github.com/containerd/containerd/api (v1.x, unchanged since containerd
// 1.0): services/events/v1/events.proto, types/event.proto,
// events/task.proto, events/container.proto,
// services/containers/v1/containers.proto, services/version/v1/version.proto.

// subscribeRequest encodes containerd.services.events.v1.SubscribeRequest
// {repeated string filters = 1}.
func subscribeRequest(filters []string) []byte {
	var b []byte
	for _, f := range filters {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, f)
	}
	return b
}

// getContainerRequest encodes containerd.services.containers.v1.GetContainerRequest
// {string id = 1}.
func getContainerRequest(id string) []byte {
	return pbwire.AppendString(nil, 1, id)
}

// envelope is containerd.types.Envelope.
type envelope struct {
	Timestamp time.Time // 1, google.protobuf.Timestamp
	Namespace string    // 2
	Topic     string    // 3
	TypeURL   string    // 4, google.protobuf.Any.type_url
	Value     []byte    // 4, google.protobuf.Any.value
}

func decodeEnvelope(b []byte) (envelope, error) {
	var e envelope
	err := pbwire.Each(b, func(f pbwire.Field) error {
		var err error
		switch {
		case f.Len(1):
			e.Timestamp, err = pbwire.Timestamp(f.Bytes)
		case f.Len(2):
			e.Namespace = string(f.Bytes)
		case f.Len(3):
			e.Topic = string(f.Bytes)
		case f.Len(4):
			e.TypeURL, e.Value, err = pbwire.Any(f.Bytes)
		}
		return err
	})
	if err != nil {
		return envelope{}, fmt.Errorf("decode envelope: %w", err)
	}
	return e, nil
}

// Event payload type names. containerd (typeurl) sends the message's full
// name as the type URL without the usual "type.googleapis.com/" prefix;
// eventType accepts both.
const (
	typeTaskCreate      = "containerd.events.TaskCreate"
	typeTaskStart       = "containerd.events.TaskStart"
	typeTaskExit        = "containerd.events.TaskExit"
	typeTaskDelete      = "containerd.events.TaskDelete"
	typeContainerDelete = "containerd.events.ContainerDelete"
)

func eventType(typeURL string) string {
	return typeURL[strings.LastIndexByte(typeURL, '/')+1:]
}

// payload holds the fields of a task or container event used here.
type payload struct {
	ContainerID string
	ExecID      string // TaskExit.id / TaskDelete.id: "" or ContainerID for the init process
	Pid         uint32
}

// decodePayload decodes one of the event messages above:
//
//	TaskCreate      {string container_id = 1; ...; uint32 pid = 6}
//	TaskStart       {string container_id = 1; uint32 pid = 2}
//	TaskExit        {string container_id = 1; string id = 2; uint32 pid = 3; ...}
//	TaskDelete      {string container_id = 1; uint32 pid = 2; ...; string id = 5}
//	ContainerDelete {string id = 1}
func decodePayload(name string, b []byte) (payload, error) {
	var idField, execField, pidField protowire.Number
	switch name {
	case typeTaskCreate:
		idField, pidField = 1, 6
	case typeTaskStart:
		idField, pidField = 1, 2
	case typeTaskExit:
		idField, execField, pidField = 1, 2, 3
	case typeTaskDelete:
		idField, execField, pidField = 1, 5, 2
	case typeContainerDelete:
		idField = 1
	default:
		return payload{}, fmt.Errorf("unexpected event type %q", name)
	}
	var p payload
	err := pbwire.Each(b, func(f pbwire.Field) error {
		switch {
		case f.Len(idField):
			p.ContainerID = string(f.Bytes)
		case execField != 0 && f.Len(execField):
			p.ExecID = string(f.Bytes)
		case pidField != 0 && f.Varint(pidField):
			p.Pid = uint32(f.Int)
		}
		return nil
	})
	if err != nil {
		return payload{}, fmt.Errorf("decode %s: %w", name, err)
	}
	return p, nil
}

// record holds the fields of containerd.services.containers.v1.Container
// used here.
type record struct {
	Labels      map[string]string // 2, map<string, string>
	SpecTypeURL string            // 5, google.protobuf.Any
	Spec        []byte
	Sandbox     string // 11 (containerd 2.x)
}

// decodeGetContainerResponse decodes GetContainerResponse {Container container = 1}.
func decodeGetContainerResponse(b []byte) (record, error) {
	var r record
	err := pbwire.Each(b, func(f pbwire.Field) error {
		if !f.Len(1) {
			return nil
		}
		return pbwire.Each(f.Bytes, func(f pbwire.Field) error {
			var err error
			switch {
			case f.Len(2):
				err = pbwire.AddMapEntry(&r.Labels, f.Bytes)
			case f.Len(5):
				r.SpecTypeURL, r.Spec, err = pbwire.Any(f.Bytes)
			case f.Len(11):
				r.Sandbox = string(f.Bytes)
			}
			return err
		})
	})
	if err != nil {
		return record{}, fmt.Errorf("decode container: %w", err)
	}
	return r, nil
}

// decodeVersionResponse decodes containerd.services.version.v1.VersionResponse
// {string version = 1; string revision = 2}.
func decodeVersionResponse(b []byte) (version, revision string, err error) {
	err = pbwire.Each(b, func(f pbwire.Field) error {
		switch {
		case f.Len(1):
			version = string(f.Bytes)
		case f.Len(2):
			revision = string(f.Bytes)
		}
		return nil
	})
	if err != nil {
		return "", "", fmt.Errorf("decode version: %w", err)
	}
	return version, revision, nil
}
