package grpcunix

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// Code is a gRPC status code.
type Code uint32

// The status codes this package and its callers look at; the others keep
// their number.
const (
	OK                Code = 0
	Canceled          Code = 1
	Unknown           Code = 2
	DeadlineExceeded  Code = 4
	NotFound          Code = 5
	PermissionDenied  Code = 7
	ResourceExhausted Code = 8
	Unimplemented     Code = 12
	Internal          Code = 13
	Unavailable       Code = 14
	Unauthenticated   Code = 16
)

var codeNames = [...]string{
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
	"Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
	"Unauthenticated",
}

// String returns the code's name as in the gRPC specification.
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Code(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// Error is a call's non-OK status: the server's, or one this package
// derived from a transport failure (Unavailable) or a cancelled context.
type Error struct {
	Code    Code
	Message string
}

// Error formats like grpc-go does, which is what people grep logs for.
func (e *Error) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", e.Code, e.Message)
}

// CodeOf returns the status code of err: OK for nil, the code of an *Error
// in its chain, Unknown otherwise.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Unknown
}

// IsUnimplemented reports whether err is the server's answer to a method
// or service it does not have.
func IsUnimplemented(err error) bool { return CodeOf(err) == Unimplemented }

// IsNotFound reports whether err is NotFound, which both CRI and containerd
// return for an id that no longer exists.
func IsNotFound(err error) bool { return CodeOf(err) == NotFound }

// statusFrom reads grpc-status and grpc-message from h; ok is false when h
// has no grpc-status.
func statusFrom(h http.Header) (err error, ok bool) {
	s := h.Get("Grpc-Status")
	if s == "" {
		return nil, false
	}
	n, perr := strconv.ParseUint(s, 10, 32)
	if perr != nil {
		return &Error{Code: Internal, Message: "malformed grpc-status " + strconv.Quote(s)}, true
	}
	if n == 0 {
		return nil, true
	}
	msg := h.Get("Grpc-Message")
	// grpc-message is percent-encoded.
	if m, err := url.PathUnescape(msg); err == nil {
		msg = m
	}
	return &Error{Code: Code(n), Message: msg}, true
}

// httpStatusCode maps the HTTP status of a response without grpc-status,
// as the gRPC specification says (doc/http-grpc-status-mapping.md).
func httpStatusCode(status int) Code {
	switch status {
	case http.StatusBadRequest:
		return Internal
	case http.StatusUnauthorized:
		return Unauthenticated
	case http.StatusForbidden:
		return PermissionDenied
	case http.StatusNotFound:
		return Unimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return Unavailable
	}
	return Unknown
}
