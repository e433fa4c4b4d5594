// Package pattern generates and verifies the deterministic byte streams
// Patu's test traffic carries. The byte at offset i of connection c is a
// keyed hash of (seed, c, i), so a receiver that knows seed and c detects
// any lost, duplicated, reordered or foreign byte, and where it happened,
// without keeping a copy of what was sent.
//
// A stream is usually preceded by a Header that tells the receiver which
// stream follows.
package pattern
