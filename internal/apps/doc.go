// Package apps is Patu's real-application suite: stock Debian programs
// (HAProxy, nginx, curl, wget, netcat, socat, Python, Java, postgres,
// redis, memcached) and Go programs moving bytes between pods, each case
// run on the bridge path (no Patu), on Patu's default packet path, on it
// with every client dialing its server through a Service (kube-proxy's
// DNAT in the node; Patu is told nothing of the Service) and, when asked,
// on the opt-in socket path. test/apps runs it as a test
// tier, test/bench (-only apps) as a benchmark section.
//
// Every run of a case gets a fresh topology (internal/testnet) whose node
// namespace has a real node's netfilter (internal/nodepath: bridge
// netfilter, conntrack, kube-proxy's drop of INVALID packets), and every
// process runs in its pod's network namespace and cgroup from its first
// instruction. A run records what the application observed (a digest that
// must be the same on every path), the host veths' bytes, the node's
// kernel CPU and Patu's counters, and checks, each within a bound:
//
//   - no error and no hang (the case's timeout);
//   - once the applications closed, no conntrack entry of the case's flows
//     is left ESTABLISHED after 5 s, no Patu flow is left open, and neither
//     conntrack's INVALID counter nor kube-proxy's INVALID drop rose;
//   - lifecycle: Patu's unload finds no live flow, and after each pod is
//     deleted its host veth disappears (its network namespace was freed:
//     nothing outlives the pod).
//
// Comparing runs across paths (same digest, the bridge carrying less than
// half on Patu's path) is the caller's, with Compare.
package apps
