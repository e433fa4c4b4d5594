package grpcdial

import (
	"os"
	"path/filepath"
	"testing"
)

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
			if conn, _, err := Dial(tt.endpoint); err == nil {
				conn.Close()
				t.Errorf("Dial(%q) succeeded", tt.endpoint)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("SocketPath(%q) = %q, %v; want %q", tt.endpoint, got, err, tt.want)
		}
		conn, path, err := Dial(tt.endpoint)
		if err != nil || path != tt.want {
			t.Errorf("Dial(%q) = %q, %v; want %q", tt.endpoint, path, err, tt.want)
		}
		if conn != nil {
			conn.Close()
		}
	}
}
