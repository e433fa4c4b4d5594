package containerd

import (
	"context"
	"fmt"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/patu-dev/patu/runtime"
	"github.com/patu-dev/patu/runtime/internal/grpcdial"
)

// DefaultNamespace is the containerd namespace of Kubernetes' containers:
// the CRI plugin puts every sandbox and container there.
const DefaultNamespace = "k8s.io"

// namespaceKey is the gRPC metadata key containerd reads the namespace of
// a namespaced call from (containerd's pkg/namespaces; that package lives
// in containerd's main module, which Patu does not link).
const namespaceKey = "containerd-namespace"

// dialTimeout bounds Dial's Version call when the caller's context has no
// deadline; callTimeout bounds each Containers.Get made while watching.
const (
	dialTimeout = 10 * time.Second
	callTimeout = 5 * time.Second
)

// Client is a connection to containerd's API. It is safe for concurrent
// use.
type Client struct {
	conn       *grpc.ClientConn
	events     eventsapi.EventsClient
	containers containersapi.ContainersClient
	path       string
	ns         string
	version    string
	revision   string
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
	withNS := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, namespaceKey, namespace)
	}
	conn, path, err := grpcdial.Dial(endpoint,
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(withNS(ctx), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(withNS(ctx), desc, cc, method, opts...)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("containerd: %w", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, dialTimeout)
		defer cancel()
	}
	v, err := versionapi.NewVersionClient(conn).Version(ctx, &emptypb.Empty{})
	if err != nil {
		conn.Close()
		if status.Code(err) == codes.Unimplemented {
			return nil, fmt.Errorf("containerd version at %s: not a containerd socket: %w: %w",
				path, runtime.ErrUnsupported, err)
		}
		return nil, fmt.Errorf("containerd version at %s: %w", path, err)
	}
	return &Client{
		conn:       conn,
		events:     eventsapi.NewEventsClient(conn),
		containers: containersapi.NewContainersClient(conn),
		path:       path,
		ns:         namespace,
		version:    v.GetVersion(),
		revision:   v.GetRevision(),
	}, nil
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
	return c.path
}
