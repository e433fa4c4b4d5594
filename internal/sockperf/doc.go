// Package sockperf parses the client output of `sockperf ping-pong
// --full-rtt`, the request/response measurement the benchmark (test/bench)
// and the demo (test/demo) run between pods.
//
// sockperf exits 0 even when it could not connect, and writes its
// statistics as colored text, so Parse treats an output without round-trip
// statistics as an error and carries sockperf's own message in it.
package sockperf
