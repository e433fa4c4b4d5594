// Package bpf loads Patu's socket redirect programs, pins them and their maps
// under one bpffs directory, attaches them to cgroups, and reads and writes
// the endpoints and counters they share with user space.
//
// All state lives in the kernel: a Datapath can be opened again by any
// process (the CLI, the watcher after a restart) from the pins alone, and
// loading a newer build replaces the programs without touching live
// connections.
package bpf
