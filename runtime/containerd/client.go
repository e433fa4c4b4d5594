package containerd

import (
	"context"
	"fmt"
	"time"

	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/internal/grpcunix"
)

// DefaultNamespace is the containerd namespace of Kubernetes' containers:
// the CRI plugin puts every sandbox and container there.
const DefaultNamespace = "k8s.io"

// namespaceKey is the gRPC metadata key containerd reads the namespace of
// a namespaced call from.
const namespaceKey = "containerd-namespace"

// gRPC method names, from the api module's service definitions.
const (
	methodVersion      = "/containerd.services.version.v1.Version/Version"
	methodSubscribe    = "/containerd.services.events.v1.Events/Subscribe"
	methodGetContainer = "/containerd.services.containers.v1.Containers/Get"
)

// dialTimeout bounds Dial's Version call when the caller's context has no
// deadline; callTimeout bounds each Containers.Get made while watching.
const (
	dialTimeout = 10 * time.Second
	callTimeout = 5 * time.Second
)

// Client is a connection to containerd's API. It is safe for concurrent
// use.
type Client struct {
	conn     *grpcunix.Conn
	ns       string
	version  string
	revision string
}

// Dial connects to containerd at endpoint, "unix:///run/containerd/containerd.sock"
// or a plain socket path, and checks that containerd answers its Version
// call. Events and containers are those of namespace, DefaultNamespace when
// empty.
//
// A socket that is not containerd's (CRI-O) gives an error wrapping
// runtime.ErrUnsupported: the caller then has no event source but CRI.
func Dial(ctx context.Context, endpoint, namespace string) (*Client, error) {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	// Every call carries the namespace: Containers.Get needs it, and it
	// costs nothing on the others.
	conn, err := grpcunix.Dial(endpoint, map[string]string{namespaceKey: namespace})
	if err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dialTimeout)
		defer cancel()
	}
	// The request is google.protobuf.Empty: no bytes.
	resp, err := conn.Invoke(ctx, methodVersion, nil)
	if err != nil {
		conn.Close()
		if grpcunix.IsUnimplemented(err) {
			return nil, fmt.Errorf("containerd version at %s: not a containerd socket: %w: %w",
				conn.Path(), runtime.ErrUnsupported, err)
		}
		return nil, fmt.Errorf("containerd version at %s: %w", conn.Path(), err)
	}
	c := &Client{conn: conn, ns: namespace}
	c.version, c.revision, err = decodeVersionResponse(resp)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("containerd version at %s: %w", conn.Path(), err)
	}
	return c, nil
}

// Close closes the connection. A running WatchEvents fails.
func (c *Client) Close() error {
	return c.conn.Close()
}

// Version returns containerd's version and git revision as reported when
// dialled, e.g. "1.6.20~ds1", "1.6.20~ds1-1+deb12u3".
func (c *Client) Version() (version, revision string) {
	return c.version, c.revision
}

// Namespace returns the containerd namespace the client watches.
func (c *Client) Namespace() string {
	return c.ns
}

// Endpoint returns the absolute path of the socket the client talks to.
func (c *Client) Endpoint() string {
	return c.conn.Path()
}
