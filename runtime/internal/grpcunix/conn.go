package grpcunix

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
)

// MaxMessageSize bounds a received message, as kubelet's CRI client does:
// ListContainers on a busy node outgrows gRPC's usual 4 MiB.
const MaxMessageSize = 16 << 20

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

// Conn is a client for one gRPC server on a unix socket. It connects on
// the first call and again after the server restarted. It is safe for
// concurrent use.
type Conn struct {
	path   string
	md     map[string]string
	tr     *http.Transport
	ctx    context.Context // cancelled by Close: ends calls in flight
	cancel context.CancelFunc
}

// Dial returns a client for the unix socket at endpoint. metadata is sent
// with every call (containerd reads its namespace from there). Like
// grpc.NewClient it does not connect.
func Dial(endpoint string, metadata map[string]string) (*Conn, error) {
	path, err := SocketPath(endpoint)
	if err != nil {
		return nil, err
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true) // and only that: HTTP/2 with prior knowledge
	ctx, cancel := context.WithCancel(context.Background())
	return &Conn{
		path: path,
		md:   metadata,
		tr: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			Protocols:          &protocols,
			DisableCompression: true,
		},
		ctx:    ctx,
		cancel: cancel,
	}, nil
}

// Path returns the socket's absolute path.
func (c *Conn) Path() string { return c.path }

// Close ends calls in flight (they fail with Canceled) and closes the
// connection. Calls made after Close fail.
func (c *Conn) Close() error {
	c.cancel()
	c.tr.CloseIdleConnections()
	return nil
}

// Invoke makes a unary call: method is "/package.Service/Method", req and
// the result are serialized protobuf messages.
func (c *Conn) Invoke(ctx context.Context, method string, req []byte) ([]byte, error) {
	s, err := c.NewStream(ctx, method, req)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	resp, err := s.Recv()
	if err == io.EOF {
		return nil, &Error{Code: Internal, Message: "server sent no response message"}
	}
	if err != nil {
		return nil, err
	}
	// The status comes after the message.
	switch _, err := s.Recv(); {
	case err == nil:
		return nil, &Error{Code: Internal, Message: "server sent more than one response message"}
	case err != io.EOF:
		return nil, err
	}
	return resp, nil
}

// Stream is the response side of a call: a server-streaming call's
// messages, or a unary call's one.
type Stream struct {
	ctx    context.Context
	resp   *http.Response
	cancel func()
	err    error // sticky: the stream's end
}

// NewStream sends req to method and returns the stream of responses. The
// call ends when ctx is done or Close is called.
//
// NewStream returns once the server has sent its response headers, which
// grpc-go does with the first message: on an event stream with nothing to
// report it waits, and its error is then the stream's (see Recv).
func (c *Conn) NewStream(ctx context.Context, method string, req []byte) (*Stream, error) {
	if c.ctx.Err() != nil {
		return nil, &Error{Code: Canceled, Message: "grpcunix: connection closed"}
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.ctx, cancel)
	end := func() {
		stop()
		cancel()
	}
	body := make([]byte, 5+len(req)) // uncompressed flag (0) and length
	binary.BigEndian.PutUint32(body[1:5], uint32(len(req)))
	copy(body[5:], req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost"+method, bytes.NewReader(body))
	if err != nil {
		end()
		return nil, fmt.Errorf("grpcunix: %w", err)
	}
	hreq.Header = http.Header{
		"Content-Type": {"application/grpc"},
		"Te":           {"trailers"},
		"User-Agent":   {"patu-grpcunix"},
	}
	for k, v := range c.md {
		hreq.Header.Set(k, v)
	}
	resp, err := c.tr.RoundTrip(hreq)
	if err != nil {
		err = transportError(ctx, err) // before end() cancels ctx
		end()
		return nil, err
	}
	s := &Stream{ctx: ctx, resp: resp, cancel: end}
	if resp.StatusCode != http.StatusOK {
		if serr, ok := statusFrom(resp.Header); ok && serr != nil {
			s.err = serr
		} else {
			s.err = &Error{Code: httpStatusCode(resp.StatusCode), Message: "unexpected HTTP status " + resp.Status}
		}
	} else if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/grpc") {
		s.err = &Error{Code: Unknown, Message: "unexpected content-type " + fmt.Sprintf("%q", ct)}
	}
	return s, nil
}

// Recv returns the next message. At the end of the stream it returns
// io.EOF when the call succeeded and an *Error with the call's status
// otherwise; a broken connection gives Unavailable, a done context
// Canceled or DeadlineExceeded.
func (s *Stream) Recv() ([]byte, error) {
	if s.err != nil {
		return nil, s.err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(s.resp.Body, hdr[:]); err != nil {
		if err == io.EOF {
			s.err = s.status()
		} else {
			s.err = transportError(s.ctx, err)
		}
		return nil, s.err
	}
	if hdr[0] != 0 {
		// Never asked for: no grpc-accept-encoding is sent.
		s.err = &Error{Code: Internal, Message: "compressed message"}
		return nil, s.err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxMessageSize {
		s.err = &Error{Code: ResourceExhausted, Message: fmt.Sprintf("message of %d bytes exceeds %d", n, MaxMessageSize)}
		return nil, s.err
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(s.resp.Body, msg); err != nil {
		s.err = transportError(s.ctx, err)
		return nil, s.err
	}
	return msg, nil
}

// status is the call's outcome once the body is fully read: io.EOF for OK.
func (s *Stream) status() error {
	err, ok := statusFrom(s.resp.Trailer)
	if !ok {
		// A response without messages carries the status in its headers.
		err, ok = statusFrom(s.resp.Header)
	}
	switch {
	case !ok:
		return &Error{Code: Unavailable, Message: "server closed the stream without a status"}
	case err != nil:
		return err
	}
	return io.EOF
}

// Close ends the call and releases its resources. It is safe to call more
// than once.
func (s *Stream) Close() {
	s.cancel()
	s.resp.Body.Close()
}

// transportError turns a failure below gRPC into a status, the way grpc-go
// reports it: the caller's cancellation as such, anything else as
// Unavailable (the runtime is down or restarting).
func transportError(ctx context.Context, err error) error {
	switch ctx.Err() {
	case context.Canceled:
		return &Error{Code: Canceled, Message: err.Error()}
	case context.DeadlineExceeded:
		return &Error{Code: DeadlineExceeded, Message: err.Error()}
	}
	return &Error{Code: Unavailable, Message: err.Error()}
}
