package runtime

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// listen creates a unix socket at path; the listener closes with the test.
func listen(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
}

func TestFindEndpoint(t *testing.T) {
	dir := t.TempDir()
	containerd := filepath.Join(dir, "containerd.sock")
	k3s := filepath.Join(dir, "k3s.sock")
	crio := filepath.Join(dir, "crio.sock")
	regular := filepath.Join(dir, "regular-file.sock")
	listen(t, k3s)
	listen(t, crio)
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		candidates []string
		want       string // "" = ErrEndpointNotFound
	}{
		{"first existing wins", []string{containerd, k3s, crio}, k3s},
		{"order matters", []string{crio, k3s}, crio},
		{"regular file is not a socket", []string{regular, crio}, crio},
		{"directory is not a socket", []string{dir, k3s}, k3s},
		{"none", []string{containerd, regular}, ""},
		{"empty list", nil, ""},
	}
	saved := Endpoints
	t.Cleanup(func() { Endpoints = saved })
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			Endpoints = tt.candidates
			got, err := FindEndpoint()
			if tt.want == "" {
				if !errors.Is(err, ErrEndpointNotFound) {
					t.Fatalf("FindEndpoint() = %q, %v; want ErrEndpointNotFound", got, err)
				}
				for _, p := range tt.candidates {
					if !strings.Contains(err.Error(), p) {
						t.Errorf("error %q does not name %s", err, p)
					}
				}
				if !strings.Contains(err.Error(), "--runtime-endpoint") {
					t.Errorf("error %q does not suggest --runtime-endpoint", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("FindEndpoint() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestDefaultEndpoints(t *testing.T) {
	want := []string{"/run/containerd/containerd.sock", "/run/k3s/containerd/containerd.sock", "/var/run/crio/crio.sock"}
	if strings.Join(Endpoints, " ") != strings.Join(want, " ") {
		t.Fatalf("Endpoints = %v, want %v", Endpoints, want)
	}
}
