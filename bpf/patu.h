/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Types and maps shared by Patu's eBPF programs and, through bpf2go's
 * generated types, by its Go code. Keep layouts explicit (no implicit
 * padding): Go reads and writes these structs byte for byte.
 */
#ifndef PATU_H
#define PATU_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define AF_INET 2
#define AF_INET6 10

/*
 * Minimal kernel types for CO-RE. The loader relocates every field access
 * against the running kernel's BTF, so only the fields we touch are declared
 * and no vmlinux.h has to be generated or committed.
 */
struct sock_common {
	struct {
		__s64 counter;
	} skc_cookie;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct {
		struct {
			int counter;
		} rmem_alloc;
	} sk_backlog;
	int sk_rcvbuf;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	const void *icsk_ulp_ops;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 copied_seq;
	__u32 write_seq;
	_Bool is_mptcp;
} __attribute__((preserve_access_index));


/* Both ends of a TCP connection seen from one socket. IPv4 addresses are
 * stored IPv4-mapped (::ffff:a.b.c.d) so one key type serves both
 * families and a dual-stack socket matches its IPv4 peer. Ports are in
 * host byte order. */
struct sock_key {
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;
	__u32 remote_port;
};

struct endpoint_key {
	__u32 ip[4];
};

enum endpoint_flags {
	/* Registered, but its sockets are never redirected (opt-out). */
	ENDPOINT_NO_REDIRECT = 1 << 0,
	/* Its sockets may take the socket path (opt-in): only where both ends
	 * have it. Otherwise the pods' TCP takes the packet path (local.h),
	 * which no application can tell from TCP. */
	ENDPOINT_SOCKET = 1 << 1,
};

struct endpoint {
	__u32 flags;
	__u32 pad;
	/* For people and `patu status` only; programs never read it. */
	char name[64];
};

enum sock_rec_flags {
	/* Its application has read it with recvmsg(2)/read(2). splice(2)
	 * cannot see redirected bytes, so only such sockets are redirected to. */
	SOCK_RECV_PROVEN = 1 << 0,
};

/* What a sender needs to know about its peer, published by the peer's own
 * sockops program. */
struct sock_rec {
	__u64 addr;   /* kernel address of the peer's struct sock */
	__u64 cookie; /* socket cookie, to tell a reused address from the peer */
	__u32 flags;  /* enum sock_rec_flags, changed only with atomics */
	/* Kernels that do not charge redirected bytes to the receiver
	 * (before 6.13): its copied_seq when inserted, and every byte its
	 * application has read since (atomic), so that a sender can tell
	 * how many redirected bytes wait unread. */
	__u32 base_copied;
	__u64 read_bytes;
	__u64 visible_after; /* test fault injection: ktime before which senders ignore it */
};

/* The path of one direction (this socket's sends). */
enum path_mode {
	PATH_TCP_WAIT = 0, /* over TCP until redirecting cannot reorder */
	PATH_REDIRECT,     /* sends go straight to the peer's ingress queue */
	PATH_TCP,          /* over TCP for the connection's life */
};

/* Why a message went over TCP. */
enum fallback_reason {
	FB_PEER_MISSING = 0, /* the peer is not (yet) in the map */
	FB_ORDERING,         /* the receiver has not read all bytes sent over TCP */
	FB_NOT_PROVEN,       /* the receiver has not read with recvmsg yet (it may splice) */
	FB_BACKPRESSURE,     /* the receiver's queue is above the mark */
	FB_PEER_GONE,        /* the peer closed or was replaced */
	FB_UNTRACKED,        /* socket in the map without Patu state */
	FB_MAX,
};

/* Per-socket state, in socket-local storage. */
struct sk_state {
	struct sock_key own_key;
	struct sock_key peer_key;
	__u64 peer_addr; /* kernel address of the peer, set when first redirecting */
	__u8 mode;        /* enum path_mode */
	__u8 reason;      /* enum fallback_reason when mode is PATH_TCP */
	__u8 proven;      /* SOCK_RECV_PROVEN already published */
	__u8 in_map;      /* this socket is in patu_socks */
	__u8 pad[4];
	__u64 redirected; /* bytes this socket redirected to its peer */
};

enum counter {
	CNT_SOCK_SEEN = 0,      /* established TCP sockets seen by sockops */
	CNT_SOCK_INSERTED,      /* put into the socket map */
	CNT_SKIP_NOT_LOCAL,     /* an end is not a registered endpoint */
	CNT_SKIP_OPT_OUT,       /* an end opted out */
	CNT_SKIP_MPTCP,         /* MPTCP subflow */
	CNT_SKIP_ULP,           /* kTLS or another ULP on the socket */
	CNT_INSERT_FAIL_STATE,  /* socket storage or record could not be made */
	CNT_INSERT_FAIL_MAP,    /* socket map update failed */
	CNT_REDIRECT_MSGS,
	CNT_REDIRECT_BYTES,
	CNT_BACKPRESSURE_TRIPS, /* redirect -> TCP because the receiver lagged */
	CNT_PROMOTIONS,         /* TCP -> redirect once that could not reorder */
	CNT_RECV_PROVEN,        /* sockets whose application read with recvmsg */
	CNT_CLOSED_UNREAD,      /* closed with redirected bytes never read */
	CNT_SOCK_CLOSED,
	CNT_SKIP_NOT_SOCKET,    /* an end has not opted in to the socket path */
	CNT_FALLBACK_MSGS,      /* FB_MAX counters, one per enum fallback_reason */
	CNT_FALLBACK_BYTES = CNT_FALLBACK_MSGS + FB_MAX,
	CNT_MAX = CNT_FALLBACK_BYTES + FB_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16384);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_socks SEC(".maps");

/* LRU, so records of sockets whose close went unseen (their cgroup was
 * detached first) age out by themselves. A missing record only ever makes
 * a sender fall back to TCP. LRU maps are preallocated: 16k records cost
 * about 2 MiB of kernel memory, sized for edge nodes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sock_key);
	__type(value, struct sock_rec);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_sock_recs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sk_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_sk_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_counters SEC(".maps");

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&patu_counters, &idx);

	if (c)
		__sync_fetch_and_add(c, n);
}

#endif /* PATU_H */
