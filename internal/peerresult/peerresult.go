// Package peerresult is the result patu-testpeer prints as its last line,
// shared by the tool, the integration tests and the benchmark.
package peerresult

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Result is the JSON line printed when a patu-testpeer run ends.
type Result struct {
	Mode   string `json:"mode"`
	Conns  int    `json:"conns"`
	OK     int    `json:"ok"`
	Failed int    `json:"failed"`
	// Bytes is the payload moved: sent and confirmed by the server
	// (client), or received (server).
	Bytes      int64    `json:"bytes"`
	Errors     []string `json:"errors"`
	DurationNS int64    `json:"duration_ns"`
	// AcceptedBytes (stall-probe): payload write() had accepted when the
	// probe ended, while the server did not read.
	AcceptedBytes int64 `json:"accepted_bytes,omitempty"`
	// QueuedBytes and UnsentBytes (stall-probe --report-queued): the
	// socket's send queue (TIOCOUTQ) and its unsent part (SIOCOUTQNSD) at
	// the end of the probe.
	QueuedBytes *int64 `json:"queued_bytes,omitempty"`
	UnsentBytes *int64 `json:"unsent_bytes,omitempty"`
	// ErrorKinds counts how connections ended where an error is an
	// acceptable outcome (rst, close-early): ECONNRESET, EPIPE, EOF, none...
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
}

// ErrNoResult is returned by Parse when the output holds no line at all.
var ErrNoResult = errors.New("patu-testpeer printed no result")

// Parse reads the result from a run's standard output: its last non-empty
// line.
func Parse(stdout []byte) (Result, error) {
	var last []byte
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := bytes.TrimSpace(sc.Bytes()); len(l) > 0 {
			last = append(last[:0], l...)
		}
	}
	var r Result
	if last == nil {
		return r, ErrNoResult
	}
	if err := json.Unmarshal(last, &r); err != nil {
		return r, fmt.Errorf("parse patu-testpeer result %q: %w", last, err)
	}
	return r, nil
}
