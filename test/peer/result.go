package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/patu-dev/patu/internal/peerresult"
)

// result is the JSON line printed when a run ends.
type result = peerresult.Result

// maxErrors bounds the messages kept in a result.
const maxErrors = 10

// recorder collects the outcome of connections handled concurrently.
type recorder struct {
	mu    sync.Mutex
	res   result
	start time.Time
}

func newRecorder(mode string) *recorder {
	return &recorder{res: result{Mode: mode, Errors: []string{}}, start: time.Now()}
}

func (r *recorder) ok(bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Conns++
	r.res.OK++
	r.res.Bytes += bytes
}

func (r *recorder) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Conns++
	r.res.Failed++
	r.addError(err)
}

// kind counts the way a connection ended, for modes where errors are fine.
func (r *recorder) kind(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.res.ErrorKinds == nil {
		r.res.ErrorKinds = map[string]int{}
	}
	r.res.ErrorKinds[errorKind(err)]++
}

// error records an error that is not a connection's (listen, accept).
func (r *recorder) error(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Failed++
	r.addError(err)
}

func (r *recorder) addError(err error) {
	if len(r.res.Errors) < maxErrors {
		r.res.Errors = append(r.res.Errors, err.Error())
	}
}

func (r *recorder) update(f func(*result)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.res)
}

// finish prints the result line and returns the exit code.
func (r *recorder) finish(w io.Writer) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.DurationNS = int64(time.Since(r.start))
	b, err := json.Marshal(r.res)
	if err != nil {
		panic(err) // a plain struct always marshals
	}
	fmt.Fprintf(w, "%s\n", b)
	if r.res.Failed > 0 {
		return 1
	}
	return 0
}

func errorKind(err error) string {
	switch {
	case err == nil:
		return "none"
	case errors.Is(err, syscall.ECONNRESET):
		return "ECONNRESET"
	case errors.Is(err, syscall.EPIPE):
		return "EPIPE"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "ECONNREFUSED"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	default:
		return "other"
	}
}

// The ack a sink-type server sends after the stream's EOF: magic "PTA1",
// status, payload bytes received; 16 bytes, big endian.
const (
	ackMagic uint32 = 0x50544131
	ackLen          = 16
)

type ackStatus uint32

const (
	ackOK       ackStatus = iota
	ackMismatch           // a byte differed from the pattern
	ackLength             // EOF before or after the header's length
	ackHeader             // no valid header
	ackRead               // read error
)

func (s ackStatus) String() string {
	switch s {
	case ackOK:
		return "ok"
	case ackMismatch:
		return "pattern mismatch"
	case ackLength:
		return "length mismatch"
	case ackHeader:
		return "bad header"
	case ackRead:
		return "read error"
	}
	return fmt.Sprintf("status %d", uint32(s))
}

func marshalAck(st ackStatus, n int64) []byte {
	b := make([]byte, ackLen)
	binary.BigEndian.PutUint32(b[0:], ackMagic)
	binary.BigEndian.PutUint32(b[4:], uint32(st))
	binary.BigEndian.PutUint64(b[8:], uint64(n))
	return b
}
