// Package grpcunix is a minimal gRPC client for a container runtime's unix
// socket: unary and server-streaming calls with serialized protobuf
// messages, over net/http's cleartext HTTP/2.
//
// It exists for size. google.golang.org/grpc with the generated CRI code
// made a test program of runtime/cri and runtime/containerd 11.3 MB instead
// of 6.3 MB (stripped), and a Go daemon's resident memory follows its
// binary size closely: its text and read-only data end up resident (13.2
// against 8.1 MiB RSS once dialled, on Linux 6.18). Patu's daemon already
// links net/http, which this package builds on. The runtimes Patu talks to are
// local, so none of what grpc-go adds beyond the wire protocol (name
// resolution, load balancing, TLS, retries, compression) is needed.
//
// The protocol follows https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md:
// a POST to /<service>/<method> with content-type application/grpc and
// "te: trailers", messages framed with a 1-byte compression flag and a
// 4-byte big-endian length, and the call's status in the grpc-status and
// grpc-message trailers (or headers, for a response without messages).
package grpcunix
