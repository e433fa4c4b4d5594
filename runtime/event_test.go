package runtime

import "testing"

func TestEventKind(t *testing.T) {
	tests := []struct {
		kind      EventKind
		name      string
		action    EventKind
		sandbox   bool
		container bool
	}{
		{SandboxCreated, "SandboxCreated", Created, true, false},
		{SandboxStarted, "SandboxStarted", Started, true, false},
		{SandboxStopped, "SandboxStopped", Stopped, true, false},
		{SandboxDeleted, "SandboxDeleted", Deleted, true, false},
		{ContainerCreated, "ContainerCreated", Created, false, true},
		{ContainerStarted, "ContainerStarted", Started, false, true},
		{ContainerStopped, "ContainerStopped", Stopped, false, true},
		{ContainerDeleted, "ContainerDeleted", Deleted, false, true},
		{Deleted, "Deleted", Deleted, false, false},
		{OnSandbox | Started, "SandboxStarted", Started, true, false},
		{0, "EventKind(0x0)", 0, false, false},
		{OnSandbox | OnContainer | Created, "EventKind(0x31)", Created, true, true},
	}
	for _, tt := range tests {
		if got := tt.kind.String(); got != tt.name {
			t.Errorf("%#x.String() = %q, want %q", uint8(tt.kind), got, tt.name)
		}
		if got := tt.kind.Action(); got != tt.action {
			t.Errorf("%v.Action() = %v, want %v", tt.kind, got, tt.action)
		}
		if tt.kind.IsSandbox() != tt.sandbox || tt.kind.IsContainer() != tt.container {
			t.Errorf("%v: IsSandbox %v IsContainer %v, want %v %v", tt.kind,
				tt.kind.IsSandbox(), tt.kind.IsContainer(), tt.sandbox, tt.container)
		}
	}
}
