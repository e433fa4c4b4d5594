package cri

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/internal/grpcdial"
)

// dialTimeout bounds the Version call of Dial when the caller's context has
// no deadline, so that a runtime that accepts connections but never answers
// (stopped with SIGSTOP, wedged) does not hang the daemon's start.
const dialTimeout = 10 * time.Second

// Client is a connection to a CRI runtime service. It is safe for
// concurrent use. The connection survives runtime restarts: calls fail
// while the runtime is away and work again once it is back.
type Client struct {
	conn    *grpc.ClientConn
	rs      runtimeapi.RuntimeServiceClient
	path    string
	name    string
	version string
}

// Dial connects to the CRI runtime at endpoint, "unix:///run/containerd/containerd.sock"
// or a plain socket path, and checks that it answers the CRI Version call.
// A socket without a CRI v1 runtime service (containerd with its CRI plugin
// disabled, say) gives an error wrapping runtime.ErrUnsupported.
func Dial(ctx context.Context, endpoint string) (*Client, error) {
	conn, path, err := grpcdial.Dial(endpoint)
	if err != nil {
		return nil, fmt.Errorf("cri: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dialTimeout)
		defer cancel()
	}
	c := &Client{conn: conn, rs: runtimeapi.NewRuntimeServiceClient(conn), path: path}
	v, err := c.rs.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		conn.Close()
		if status.Code(err) == codes.Unimplemented {
			return nil, fmt.Errorf("cri version at %s: no CRI v1 runtime service: %w: %w", path, runtime.ErrUnsupported, err)
		}
		return nil, fmt.Errorf("cri version at %s: %w", path, err)
	}
	c.name, c.version = v.GetRuntimeName(), v.GetRuntimeVersion()
	return c, nil
}

// Close closes the connection. Calls in flight fail, and so does a running
// WatchEvents.
func (c *Client) Close() error {
	return c.conn.Close()
}

// RuntimeName returns the runtime's name and version as it reported them
// when dialled, e.g. "containerd", "v2.4.2" or "cri-o", "1.30.0".
func (c *Client) RuntimeName() (name, version string) {
	return c.name, c.version
}

// LegacyContainerd reports whether the runtime is containerd 1.x, whose CRI
// event stream is missing (1.6) or must not be shared (1.7, see
// WatchEvents): take events from runtime/containerd there. Version strings
// vary by build ("v1.7.23-k3s1", "1.6.20~ds1", "2.4.2+unknown"), hence a
// function rather than a comparison at each caller.
func (c *Client) LegacyContainerd() bool {
	return legacyContainerd(c.name, c.version)
}

func legacyContainerd(name, version string) bool {
	return name == "containerd" && strings.HasPrefix(strings.TrimPrefix(version, "v"), "1.")
}

// Endpoint returns the absolute path of the socket the client talks to.
func (c *Client) Endpoint() string {
	return c.path
}

// errNoInfo is returned when a verbose status carries no "info" document,
// as with runtimes that do not implement verbose status.
var errNoInfo = errors.New("runtime returned no verbose info")

// notFound adds runtime.ErrNotFound to gRPC's NotFound, so that callers can
// tell "already gone" (a race with removal, normal) from a failing runtime.
func notFound(err error) error {
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("%w: %w", runtime.ErrNotFound, err)
	}
	return err
}

func nanos(ns int64) time.Time {
	if ns <= 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
