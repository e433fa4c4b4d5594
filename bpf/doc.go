// Package bpf loads Patu's eBPF programs, pins them and their maps under
// one bpffs directory, and reads and writes the state they share with user
// space: the socket path (sockops on cgroups, sk_msg, endpoints, pod
// records) and the XDP path (an XDP program on uplinks that redirects
// traffic for pod addresses and hostPorts into the pods' veths, and a tc
// program on those veths that sends the replies back the same way).
//
// All state lives in the kernel: a Datapath can be opened again by any
// process (the CLI, the watcher after a restart) from the pins alone, and
// loading a newer build replaces the programs without touching live
// connections.
package bpf
