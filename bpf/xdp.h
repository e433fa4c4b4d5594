/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types and maps of Patu's XDP fast path for traffic entering the node
 * (xdp.c), shared with Go through bpf2go's generated types. Layouts are
 * explicit (no implicit padding): Go reads and writes them byte for byte.
 *
 * Addresses are 16 bytes, IPv4 stored IPv4-mapped (::ffff:a.b.c.d), as in
 * patu.h. Ports in keys and values are in network byte order, as they are
 * in the packet: the programs compare and copy them without swapping.
 */
#ifndef PATU_XDP_H
#define PATU_XDP_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* A pod address: key of patu_xdp_routes. */
struct route_key {
	__u32 ip[4];
};

enum route_flags {
	/* Registered, but never takes the XDP path (policy opt-out). */
	ROUTE_EXCLUDED = 1 << 0,
	/* Its connections with other pods never take the local packet path
	 * (local.h): opted out of Patu's redirects. */
	ROUTE_NO_LOCAL = 1 << 1,
	/* The pod's MACs are unknown: the local path can use the route, XDP,
	 * which writes them into frames, cannot. */
	ROUTE_NO_MACS = 1 << 2,
};

/* How to hand a frame to a pod. */
struct route {
	__u32 ifindex;     /* the pod's host-side veth, in the node's netns */
	__u32 flags;       /* enum route_flags */
	__u8 pod_mac[6];   /* destination MAC: the pod's eth0 */
	__u8 host_mac[6];  /* source MAC: the pod's gateway (bridge or host veth) */
};

/* hostPort: (node address or any, proto, host port). */
struct hostport_key {
	__u32 ip[4];  /* all zero: any local address of the node */
	__u16 port;   /* network order */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

struct hostport {
	__u32 pod_ip[4];
	__u16 pod_port; /* network order */
	__u16 pad;
};

/*
 * A flow XDP delivered to a pod, keyed by its replies' 5-tuple as the pod
 * sends them: src = the pod, dst = the remote client.
 */
struct flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u8 proto;
	__u8 pad[3];
};

enum flow_flags {
	/* Came in through a hostPort: replies get orig_ip:orig_port as source. */
	FLOW_NAT = 1 << 0,
};

struct flow {
	__u32 orig_ip[4];   /* the node address the client sent to (FLOW_NAT) */
	__u32 uplink;       /* ifindex of the uplink the flow came in on */
	__u16 orig_port;    /* the host port the client sent to (FLOW_NAT), network order */
	__u8 flags;         /* enum flow_flags */
	__u8 pad;
};

/* An uplink with the XDP program attached (Go bookkeeping only). */
enum uplink_mode {
	UPLINK_NATIVE = 1,
	UPLINK_GENERIC = 2,
};

struct uplink {
	__u32 mode; /* enum uplink_mode */
	char name[16];
};

/*
 * patu_xdp_ports is a bit set over (kind, proto, port): one bit per
 * destination port, so that the per-packet check is an array access the
 * verifier inlines, not a hash lookup. Words are 64 bits, so a
 * (kind, proto) plane is 65536 / 64 = 1024 words.
 */
enum port_kind {
	PORTS_EXCLUDED = 0, /* never take the XDP path */
	PORTS_HOSTPORT = 1, /* some hostPort entry uses this port */
	PORTS_KINDS,
};
#define PORT_PLANE_WORDS 1024
#define PORT_WORDS (PORTS_KINDS * 2 * PORT_PLANE_WORDS)

/* Counters of the XDP and tc programs, per CPU. */
enum xdp_counter {
	XC_PASS_NOT_IP = 0,     /* ARP, LLDP, anything not IPv4/IPv6 */
	XC_PASS_VLAN,           /* VLAN-tagged frame */
	XC_PASS_L2_MULTICAST,   /* broadcast or multicast destination MAC */
	XC_PASS_SHORT,          /* truncated headers */
	XC_PASS_FRAGMENT,       /* IPv4 fragment (MF or offset) */
	XC_PASS_IP_OPTIONS,     /* IPv4 header with options */
	XC_PASS_IPV6_EXT,       /* IPv6 extension header (fragments included) */
	XC_PASS_ICMP,           /* ICMP, ICMPv6 (neighbour discovery included) */
	XC_PASS_PROTO,          /* other protocols than TCP, UDP, ICMP */
	XC_PASS_TTL,            /* TTL / hop limit <= 1: the kernel answers */
	XC_PASS_NO_MATCH,       /* neither a pod address nor a hostPort */
	XC_PASS_NOT_LOCAL,      /* "any address" hostPort, but not addressed to the node */
	XC_PASS_NO_ROUTE,       /* hostPort to a pod without an XDP route */
	XC_PASS_EXCLUDED_PORT,
	XC_PASS_EXCLUDED_POD,
	XC_PASS_NOT_NEW,        /* TCP to a hostPort, neither a SYN nor of a known flow */
	XC_REDIRECT_POD,
	XC_REDIRECT_HOSTPORT,
	XC_REDIRECT_ERROR,
	XC_FLOW_INSERT,         /* new flow recorded */
	XC_FLOW_INSERT_FAIL,
	XC_REPLY_NAT,           /* tc: reply translated back to node address:host port */
	XC_REPLY_REDIRECT,      /* tc: reply sent straight out of the uplink */
	XC_REPLY_REDIRECT_NEIGH,/* tc: same, the kernel resolving the next hop's MAC */
	XC_REPLY_PASS,          /* tc: flow known, left to the normal path (route, MTU, TTL) */
	XC_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct route_key);
	__type(value, struct route);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_xdp_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct hostport_key);
	__type(value, struct hostport);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_xdp_hostports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct flow_key);
	__type(value, struct flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_xdp_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_xdp_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct uplink);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_xdp_uplinks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XC_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_xdp_counters SEC(".maps");

static __always_inline void xcount(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&patu_xdp_counters, &idx);

	if (c)
		*c += 1; /* per CPU, and XDP/tc run with preemption off */
}

#endif /* PATU_XDP_H */
