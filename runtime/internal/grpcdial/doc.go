// Package grpcdial opens the gRPC client connection both runtime clients
// use: google.golang.org/grpc over the runtime's unix socket, with the
// options a node agent needs from a local runtime that may restart under it.
//
// grpc-go reconnects by itself, with its own backoff, after the runtime
// restarts; calls made while it is away fail fast with Unavailable (unary)
// or end their stream, and the callers resync. Keepalive pings are sent
// only while a call is open (the event streams, which can stay quiet for
// hours) and no more often than gRPC servers accept by default, so that a
// wedged runtime (stopped, deadlocked) ends the stream instead of hanging
// the watcher forever.
package grpcdial
