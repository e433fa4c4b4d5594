package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// ErrUnsupported is wrapped by errors from a runtime that does not offer
// what was asked for: CRI GetContainerEvents on containerd 1.6 (gRPC
// Unimplemented), or containerd's own services on a socket that is not
// containerd's (CRI-O). Callers fall back to another source instead of
// retrying.
var ErrUnsupported = errors.New("not supported by this container runtime")

// ErrNotFound is wrapped by errors about a sandbox or container the runtime
// no longer knows: usually a race with its removal, which a reconciler
// treats as "gone" rather than as a failure.
var ErrNotFound = errors.New("not found in the container runtime")

// Source names, as found in Event.Source.
const (
	SourceCRI        = "cri"
	SourceContainerd = "containerd"
)

// EventKind says what happened (Action) and, when the source knows, to which
// kind of object: a pod sandbox or an application container. It is a small
// bit set so that a switch can name the exact case (SandboxStarted) while
// code that does not care about the object can switch on Action.
//
// A kind with neither OnSandbox nor OnContainer set (plain Deleted, say)
// means the source could not tell: containerd's /containers/delete for an id
// the subscriber never saw before, or a CRI event without sandbox status.
type EventKind uint8

// Actions. On their own they are events about an object of unknown kind.
const (
	Created EventKind = 1 + iota
	Started
	Stopped
	Deleted

	actionMask EventKind = 0x0f
)

// Objects, combined with an action: OnSandbox|Started == SandboxStarted.
const (
	OnSandbox   EventKind = 0x10
	OnContainer EventKind = 0x20
)

// The classified kinds.
//
// From CRI they mean what the CRI says (CREATED after CreateContainer or
// RunPodSandbox, and so on). From containerd they follow the task:
// Created is /tasks/create (the process exists, for an app container that is
// at StartContainer), Started is /tasks/start, Stopped is /tasks/exit and
// /tasks/delete of the init process, Deleted is /containers/delete.
const (
	SandboxCreated   = OnSandbox | Created
	SandboxStarted   = OnSandbox | Started
	SandboxStopped   = OnSandbox | Stopped
	SandboxDeleted   = OnSandbox | Deleted
	ContainerCreated = OnContainer | Created
	ContainerStarted = OnContainer | Started
	ContainerStopped = OnContainer | Stopped
	ContainerDeleted = OnContainer | Deleted
)

// Action returns what happened, without the object: Created, Started,
// Stopped or Deleted.
func (k EventKind) Action() EventKind { return k & actionMask }

// IsSandbox reports whether the event is known to be about a pod sandbox.
func (k EventKind) IsSandbox() bool { return k&OnSandbox != 0 }

// IsContainer reports whether the event is known to be about an application
// container.
func (k EventKind) IsContainer() bool { return k&OnContainer != 0 }

// String returns a name like "SandboxStarted", or "Deleted" when the object
// is unknown.
func (k EventKind) String() string {
	var action string
	switch k.Action() {
	case Created:
		action = "Created"
	case Started:
		action = "Started"
	case Stopped:
		action = "Stopped"
	case Deleted:
		action = "Deleted"
	default:
		return fmt.Sprintf("EventKind(%#x)", uint8(k))
	}
	switch k &^ actionMask {
	case 0:
		return action
	case OnSandbox:
		return "Sandbox" + action
	case OnContainer:
		return "Container" + action
	}
	return fmt.Sprintf("EventKind(%#x)", uint8(k))
}

// Event is something a runtime reported about a sandbox or container.
type Event struct {
	Kind EventKind
	// ID is the sandbox's id for sandbox events, the container's otherwise.
	ID string
	// SandboxID is the pod sandbox the object belongs to, when the source
	// knows it; equal to ID for sandbox events.
	SandboxID string
	// Pid is the object's init process, when the source reports it
	// (containerd task events); 0 otherwise.
	Pid int
	// Time is when the runtime says it happened. Replayed events carry
	// their original time, so it can be far in the past.
	Time time.Time
	// Source is SourceCRI or SourceContainerd.
	Source string
}

// deadlineSkew bounds how much earlier than ctx a server may act on its
// deadline (the grpc-timeout it was sent, measured from its own receipt).
const deadlineSkew = 100 * time.Millisecond

// StreamError says why an event stream named what ended: ctx's error when
// ctx is done, an error wrapping ErrUnsupported when the server does not
// implement the call, "<closer> closed the stream" on EOF, err otherwise.
func StreamError(ctx context.Context, what, closer string, err error, unimplemented bool) error {
	// The server learns ctx's deadline and may end the stream by it a
	// moment before ctx itself expires here: that end is still the
	// caller's deadline, not a broken stream.
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < deadlineSkew {
		select {
		case <-ctx.Done():
		case <-time.After(2 * deadlineSkew):
		}
	}
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case unimplemented:
		return fmt.Errorf("%s: %w: %w", what, ErrUnsupported, err)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%s: %s closed the stream: %w", what, closer, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
