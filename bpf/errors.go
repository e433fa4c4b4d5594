package bpf

import "errors"

var (
	// ErrNotLoaded is returned when the pin directory holds no Patu maps.
	ErrNotLoaded = errors.New("patu is not loaded (run: patu load)")
	// ErrNotSupported is returned when the kernel lacks a feature Patu needs.
	ErrNotSupported = errors.New("kernel lacks a feature patu needs")
	// ErrEndpointNotFound is returned when deleting an unknown endpoint.
	ErrEndpointNotFound = errors.New("endpoint not found")
)
