// Command bench compares Patu with the paths it replaces, side by side in
// one run: two pods talking over their veths and bridge (Patu not loaded),
// the same pods with Patu loaded, attached and registered, and loopback
// inside one pod. Shared machines are noisy, so only ratios measured in the
// same run count: every measurement runs on the three paths back to back,
// in a rotating order, repeated -runs times.
//
// Request/response latency comes from sockperf ping-pong (64 B, 1 KiB,
// 16 KiB; the scheduler placing both ends, and both ends on CPU 0), CPU per
// transaction from /proc/stat during sockperf's own test window, bulk
// throughput and CPU per GB from one iperf3 stream (1 KiB, 64 KiB, 1 MiB
// writes). Every Patu run also records Patu's counters and the packets on
// the pods' host veths, the proof that it was redirected. The tools'
// output is parsed, never guessed: a run whose tool failed is reported as
// failed.
//
//	go run ./test/bench                 # 3 runs of 4 s; table on stdout, out/bench.json
//	go run ./test/bench -quick          # 1 run of 2 s, RR 64 B / 1 KiB and bulk 64 KiB
//	go run ./test/bench -demo           # a verified transfer with Patu's counters, then -quick
//
// It needs root. The topology (prefix "bn", 10.201.240.0/24,
// fd00:201:240::/64) and Patu's pins (/sys/fs/bpf/patu-bench) are removed
// on exit, on Ctrl-C and, if a run was killed, at the start of the next.
package main
