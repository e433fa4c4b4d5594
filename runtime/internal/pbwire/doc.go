// Package pbwire reads and writes the few protobuf messages Patu exchanges
// with container runtimes directly in the wire format, so that the daemon
// links neither generated code nor protobuf's reflection (see
// runtime/internal/grpcunix for why size matters).
//
// Decoders walk a message's fields with Each and pick the ones they know by
// number and wire type; unknown fields are skipped, as protobuf requires,
// so newer runtimes that add fields keep working.
package pbwire
