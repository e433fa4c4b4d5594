package grpcdial

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// MaxMessageSize bounds a received message, as kubelet's CRI client does:
// ListContainers on a busy node outgrows gRPC's usual 4 MiB.
const MaxMessageSize = 16 << 20

// readBufferSize is the connection's read buffer: a sandbox status or an
// event is a few KiB; larger messages are read through it in parts.
const readBufferSize = 8 << 10

// Keepalive settings. grpc-go servers (containerd, CRI-O) by default close
// a connection whose client pings more often than every 5 minutes, so the
// interval cannot be shorter; a runtime that does not answer a ping within
// the timeout is taken as gone.
const (
	keepaliveTime    = 5 * time.Minute
	keepaliveTimeout = 20 * time.Second
)

// SocketPath turns an endpoint, "unix:///run/x.sock" or a plain path, into
// an absolute socket path. Other schemes (tcp://, npipe://) are refused: a
// runtime on the same node always listens on a unix socket.
func SocketPath(endpoint string) (string, error) {
	p := endpoint
	if i := strings.Index(p, "://"); i >= 0 {
		if p[:i] != "unix" {
			return "", fmt.Errorf("endpoint %q: only unix sockets are supported", endpoint)
		}
		p = p[i+3:]
	}
	if p == "" {
		return "", errors.New("empty runtime endpoint")
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	return abs, nil
}

// Dial returns a client connection to the unix socket at endpoint, and the
// socket's absolute path. Like grpc.NewClient it does not connect: the
// first call does. opts are added after the defaults.
func Dial(endpoint string, opts ...grpc.DialOption) (*grpc.ClientConn, string, error) {
	path, err := SocketPath(endpoint)
	if err != nil {
		return nil, "", err
	}
	all := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		// The daemon sends a request now and then and reads small
		// events: per-connection buffers of grpc's default 32 KiB each
		// would sit mostly idle in its heap.
		grpc.WithReadBufferSize(readBufferSize),
		grpc.WithSharedWriteBuffer(true),
		// A local runtime restarts in well under a second; grpc's default
		// backoff caps at 2 minutes, which would leave the node's pods
		// unwatched that long after a slow restart.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}, opts...)
	// The unix scheme is grpc-go's own resolver for socket paths.
	conn, err := grpc.NewClient("unix://"+path, all...)
	if err != nil {
		return nil, "", fmt.Errorf("grpc client for %s: %w", path, err)
	}
	return conn, path, nil
}
