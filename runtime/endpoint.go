package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// Endpoints are the sockets FindEndpoint tries, in order: containerd,
// containerd as shipped in k3s, CRI-O. It is a variable so that tests (and
// distributions with other paths) can replace it.
var Endpoints = []string{
	"/run/containerd/containerd.sock",
	"/run/k3s/containerd/containerd.sock",
	"/var/run/crio/crio.sock",
}

// ErrEndpointNotFound is wrapped by FindEndpoint's error when none of the
// Endpoints is a socket.
var ErrEndpointNotFound = errors.New("no container runtime socket found")

// FindEndpoint returns the first of Endpoints that exists and is a unix
// socket. It only looks at the file system: whether something answers on the
// socket is for the dialer to find out.
func FindEndpoint() (string, error) {
	for _, p := range Endpoints {
		fi, err := os.Stat(p)
		if err == nil && fi.Mode().Type() == fs.ModeSocket {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w (tried %s): pass the runtime's socket with --runtime-endpoint",
		ErrEndpointNotFound, strings.Join(Endpoints, ", "))
}
