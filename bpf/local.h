/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Patu's packet path between pods of this node (the default fast path for
 * node-local TCP), run by the tcx program on each pod's host-side veth:
 * what the pod sends enters the node there.
 *
 * A TCP connection between two registered pods keeps TCP end to end, so
 * nothing an application can observe changes (splice, blocking reads,
 * flow control, errors). Its handshake takes the normal path (bridge,
 * netfilter: policy, kube-proxy, conntrack decide it); once the client
 * acknowledges the server's SYN-ACK, both directions are admitted and
 * their packets go from one pod's host veth straight into the other pod
 * (bpf_redirect_peer), past the bridge and the node's netfilter.
 *
 * The two ends are matched by what survives a destination translation: a
 * client's address, port and initial sequence number are what the server
 * answers, whatever address the client dialed (a pod, a Service's cluster
 * IP, a NodePort or a hostPort that kube-proxy or portmap translated). For
 * a translated connection the program then does the translation itself:
 * the client's packets get the server's address and port, the server's
 * packets the address and port the client dialed, and the hop the routed
 * path would add (TTL, MACs). A connection whose client the node
 * translated too (masquerade: hairpin, most NodePorts) cannot be matched
 * and stays on the normal path, counted.
 *
 * Conntrack then sees nothing of the flow, so everything of an admitted
 * flow must stay on this path until it ends: a later packet through
 * netfilter would be out of its window (INVALID, which kube-proxy drops).
 * Hence a plain hash (never evicted) for admitted flows, and the conntrack
 * entry kept alive while the flow is. At RST or the second FIN the flow
 * keeps this path for a short grace (the last ACK, packets in flight), and
 * its conntrack entry ends at once: conntrack never saw the FINs that would
 * have taken it to TIME_WAIT, and an entry left ESTABLISHED would outlive
 * the connection for nothing. Nothing of the flow reaches netfilter during
 * the grace, and a new connection on the same ports starts a new entry.
 */
#ifndef PATU_LOCAL_H
#define PATU_LOCAL_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdp.h" /* patu_xdp_routes: the registered pods and their host veths */

/* One direction of a TCP connection as it leaves the sending pod. */
struct local_key {
	__u32 src[4]; /* IPv4 mapped into IPv6, as everywhere in Patu */
	__u32 dst[4];
	__u16 sport;  /* network order */
	__u16 dport;  /* network order */
};

enum local_state {
	LOCAL_SYN = 1,  /* pending: the client's SYN went out */
	LOCAL_SYNACK,   /* pending: the server's SYN-ACK went back */
	LOCAL_OPEN,     /* admitted */
	LOCAL_CLOSING,  /* RST, or FIN both ways: admitted until expires */
};

/* How an admitted direction's packets enter the other pod. Straight in
 * (bpf_redirect_peer: the receiving pod's stack runs in the same softirq
 * pass) is the lowest latency, but a bulk sender's data is transmitted
 * both from its own syscalls, which deliver at once, and from the softirq
 * that processes its ACKs, whose transmits wait in that CPU's backlog: the
 * newer data overtakes the older, and the receiver's SACKs make the
 * sender retransmit (measured: 30 to 50 times the bridge's fast
 * retransmits with 1 MiB writes, and less throughput than the bridge).
 * Handing a bulk direction's packets to the pod's host veth instead
 * (bpf_redirect: one more pass through the backlog, as the bridge path
 * has) queues both kinds of transmit alike. A direction moves once, from
 * straight in to the backlog, at its first large packet: that move cannot
 * reorder (what went straight in is already delivered), the reverse
 * could, and is never made. */
enum local_via {
	LOCAL_VIA_PEER = 0,  /* straight in, until the first large packet */
	LOCAL_VIA_BACKLOG,   /* through the host veth and the backlog */
	LOCAL_VIA_PEER_ONLY, /* straight in always: the frame's MACs would not be the pod's */
};

enum local_nat {
	LOCAL_NAT_DST = 1, /* the client's direction: dst becomes nat_ip:nat_port */
	LOCAL_NAT_SRC = 2, /* the server's direction: src becomes nat_ip:nat_port */
};

/* An admitted direction. */
struct local_flow {
	__u32 to;       /* the peer pod's host-side veth: bpf_redirect_peer target */
	__u32 from;     /* the host-side veth this direction's packets enter by */
	__u8 state;     /* enum local_state: LOCAL_OPEN or LOCAL_CLOSING */
	__u8 fin;       /* this direction sent FIN */
	__u8 nat;       /* enum local_nat, 0 for none */
	__u8 macs;      /* mac_dst and mac_src are set (translated flows) */
	__u16 nat_port; /* network order */
	__u8 via;       /* enum local_via */
	__u8 pad;
	__u32 nat_ip[4];
	/* The peer pod's interface and its gateway, where known: written into
	 * translated packets (macs), compared with the frame's own destination
	 * before a direction moves to the backlog (the pod's interface only
	 * takes frames to its MAC when they come through its veth). */
	__u8 mac_dst[6];
	__u8 mac_src[6];
	__u64 expires;  /* LOCAL_CLOSING: ktime after which the entry goes */
	__u64 ct_seen;  /* ktime the conntrack entry was last kept alive */
};

/* A handshake in progress: the client's address, port and initial
 * sequence number, which the server's SYN-ACK names too (as its
 * destination and its ack - 1) after any destination translation. */
struct local_pkey {
	__u32 ip[4];
	__u32 isn;   /* host order */
	__u16 port;  /* network order */
	__u16 pad;
};

struct local_pending {
	__u8 state;         /* LOCAL_SYN or LOCAL_SYNACK */
	__u8 pad[3];
	__u32 client_veth;  /* the client pod's host-side veth */
	__u32 server_veth;  /* the server pod's (SYN-ACK seen) */
	__u32 dialed[4];    /* the destination the client dialed */
	__u32 server[4];    /* the server pod's address (SYN-ACK seen) */
	__u16 dialed_port;  /* network order */
	__u16 server_port;  /* network order */
	__u32 pad2;
	__u64 seen;         /* ktime of the last handshake packet */
};

enum local_counter {
	LC_SYN = 0,          /* client SYNs between two registered pods */
	LC_ADMIT,            /* connections admitted (both directions) */
	LC_ADMIT_FULL,       /* not admitted: the flow table is full */
	LC_SKIP_OPT_OUT,     /* handshake between pods, one opted out */
	LC_REDIRECT_PKTS,
	LC_REDIRECT_BYTES,
	LC_CLOSE_FIN,        /* connections that ended with FIN both ways */
	LC_CLOSE_RST,        /* connections that ended with RST */
	LC_EXPIRED,          /* closed flows removed by the program after their grace */
	LC_WRONG_VETH,       /* a flow's packet entered by another veth: normal path */
	LC_CT_REFRESH,       /* conntrack entries kept alive */
	LC_CT_CLOSE,         /* conntrack entries ended at close */
	LC_CT_MISSING,       /* conntrack had no entry for an admitted flow */
	LC_REDIRECT_BIG,     /* packets over 64 KiB carried (BIG TCP) */
	LC_ADMIT_NAT,        /* connections admitted through a destination translation */
	LC_SKIP_SNAT,        /* SYN-ACK to a translated client (masquerade): not matched */
	LC_SKIP_NAT_FAIL,    /* a translated packet the program could not rewrite */
	LC_BACKLOG_PKTS,     /* of the redirected: through the peer's host veth */
	LC_BACKLOG_BYTES,
	LC_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct local_key);
	__type(value, struct local_flow);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_local_flows SEC(".maps");

/* Settings the registering programs (CNI plugin, daemon, hooks) read:
 * index 0 only. */
struct settings {
	/* GSO size set on each registered pod's interface, 0 to leave it:
	 * BIG TCP, opt-in (patu load --big-tcp). */
	__u32 big_tcp;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_settings SEC(".maps");

/* LRU: a handshake that never completes ages out; losing a pending entry
 * only leaves its connection on the normal path. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct local_pkey);
	__type(value, struct local_pending);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_local_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LC_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} patu_local_counters SEC(".maps");


/*
 * Load-time settings (Load sets them). Conntrack timeouts are in ms, as
 * bpf_ct_change_timeout takes them.
 */
const volatile __u32 ct_established_ms = 432000000; /* nf_conntrack_tcp_timeout_established */
const volatile __u64 ct_refresh_ns = 30000000000ULL; /* keep-alive period of an open flow's entry */
const volatile __u64 close_grace_ns = 10000000000ULL; /* closed flow: stays on this path this long */
/* Whether the conntrack kfuncs resolve (Load probes it). A setting, not
 * `if (!bpf_skb_ct_lookup)`: testing a kfunc's address is an ld_imm64 of
 * a function that kernels before 6.3 refuse ("BPF_LD_IMM64 uses reserved
 * fields"), and with this frozen at 0 the verifier never reaches the
 * calls the loader poisoned. */
const volatile __u8 ct_kfuncs = 0;

/*
 * Conntrack's kfuncs (Linux 6.0+, in nf_conntrack). Weak: without
 * conntrack (module not loaded, or a kernel without them) the loader
 * poisons the calls, ct_kfuncs is 0 so none is reached, and flows are
 * simply not kept in conntrack's view.
 * bpf_ct_opts here is the 6.0/6.1 layout; later kernels accept its size.
 */
struct bpf_ct_opts___patu {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

/* Only ever handed back to the kfuncs; declared with a field, as the
 * loader matches kfunc signatures against the kernel's types. */
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts___patu *opts, __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;
extern int bpf_ct_change_timeout(struct nf_conn *ct, __u32 timeout) __ksym __weak;

static __always_inline void lcount(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&patu_local_counters, &idx);

	if (c)
		*c += n; /* per CPU; tc runs with preemption off */
}

static __always_inline int addr_eq(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void local_reverse(const struct local_key *in, struct local_key *out)
{
	__builtin_memcpy(out->src, in->dst, sizeof(out->src));
	__builtin_memcpy(out->dst, in->src, sizeof(out->dst));
	out->sport = in->dport;
	out->dport = in->sport;
}

/* The key of the other direction of the flow whose direction k is: for a
 * translated flow, the other end's addresses are the translated ones. */
static __always_inline void local_peer_key(const struct local_key *k, const struct local_flow *f, struct local_key *out)
{
	local_reverse(k, out);
	if (f->nat == LOCAL_NAT_DST) {
		__builtin_memcpy(out->src, f->nat_ip, sizeof(out->src));
		out->sport = f->nat_port;
	} else if (f->nat == LOCAL_NAT_SRC) {
		__builtin_memcpy(out->dst, f->nat_ip, sizeof(out->dst));
		out->dport = f->nat_port;
	}
}

/* Sets the timeout of the flow's conntrack entry, when conntrack is there
 * and has one. k is either direction: conntrack finds an entry by its
 * original or its reply tuple. */
static __always_inline void ct_set_timeout(struct __sk_buff *skb, const struct local_key *k, int v4, __u32 ms,
					   __u32 counter)
{
	struct bpf_ct_opts___patu opts = {.netns_id = -1 /* BPF_F_CURRENT_NETNS */, .l4proto = IPPROTO_TCP};
	struct bpf_sock_tuple t = {};
	struct nf_conn *ct;
	__u32 size;

	if (!ct_kfuncs)
		return;
	if (v4) {
		t.ipv4.saddr = k->src[3];
		t.ipv4.daddr = k->dst[3];
		t.ipv4.sport = k->sport;
		t.ipv4.dport = k->dport;
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, k->src, 16);
		__builtin_memcpy(t.ipv6.daddr, k->dst, 16);
		t.ipv6.sport = k->sport;
		t.ipv6.dport = k->dport;
		size = sizeof(t.ipv6);
	}
	ct = bpf_skb_ct_lookup(skb, &t, size, &opts, sizeof(opts));
	if (!ct) {
		lcount(LC_CT_MISSING, 1);
		return;
	}
	bpf_ct_change_timeout(ct, ms);
	bpf_ct_release(ct);
	lcount(counter, 1);
}

/* Both directions of an admitted flow go on closing, with the grace; the
 * conntrack entry ends now (a timeout of 0 expires it: conntrack drops
 * expired entries on lookup, dump and garbage collection). */
static __always_inline void local_close(struct __sk_buff *skb, struct local_flow *f, const struct local_key *k,
					int v4, __u64 now, __u32 counter)
{
	struct local_key rk;
	struct local_flow *r;

	if (f->state == LOCAL_CLOSING)
		return;
	f->state = LOCAL_CLOSING;
	f->expires = now + close_grace_ns;
	local_peer_key(k, f, &rk);
	r = bpf_map_lookup_elem(&patu_local_flows, &rk);
	if (r) {
		r->state = LOCAL_CLOSING;
		r->expires = f->expires;
	}
	lcount(counter, 1);
	ct_set_timeout(skb, k, v4, 0, LC_CT_CLOSE);
}

/* Admits the connection whose client direction is k (as the client sends
 * it, to the address it dialed), answered by the server p names: both
 * directions get their entry, the server's first so that the client's
 * (which the caller sees next) only exists when both do. */
static __always_inline void local_admit(const struct local_key *k, const struct local_pending *p)
{
	struct local_flow c = {}, s = {};
	struct route *cr, *sr;
	struct local_key sk;
	int nat;

	nat = !addr_eq(p->dialed, p->server) || p->dialed_port != p->server_port;
	sr = bpf_map_lookup_elem(&patu_xdp_routes, (struct route_key *)p->server);
	cr = bpf_map_lookup_elem(&patu_xdp_routes, (struct route_key *)k->src);
	if (!sr || !cr || ((sr->flags | cr->flags) & ROUTE_NO_LOCAL))
		return;

	/* The server's direction: from its address to the client's. */
	__builtin_memcpy(sk.src, p->server, sizeof(sk.src));
	__builtin_memcpy(sk.dst, k->src, sizeof(sk.dst));
	sk.sport = p->server_port;
	sk.dport = k->sport;

	s.to = p->client_veth;
	s.from = p->server_veth;
	s.state = LOCAL_OPEN;
	s.ct_seen = bpf_ktime_get_ns();
	c.to = p->server_veth;
	c.from = p->client_veth;
	c.state = LOCAL_OPEN;
	c.ct_seen = s.ct_seen;
	c.via = LOCAL_VIA_PEER_ONLY;
	s.via = LOCAL_VIA_PEER_ONLY;
	if (!(sr->flags & ROUTE_NO_MACS)) {
		c.via = LOCAL_VIA_PEER;
		__builtin_memcpy(c.mac_dst, sr->pod_mac, 6);
		__builtin_memcpy(c.mac_src, sr->host_mac, 6);
	}
	if (!(cr->flags & ROUTE_NO_MACS)) {
		s.via = LOCAL_VIA_PEER;
		__builtin_memcpy(s.mac_dst, cr->pod_mac, 6);
		__builtin_memcpy(s.mac_src, cr->host_mac, 6);
	}
	if (nat) {
		/* As the routed path delivers it: from the gateway, to the pod. */
		c.nat = LOCAL_NAT_DST;
		__builtin_memcpy(c.nat_ip, p->server, sizeof(c.nat_ip));
		c.nat_port = p->server_port;
		s.nat = LOCAL_NAT_SRC;
		__builtin_memcpy(s.nat_ip, p->dialed, sizeof(s.nat_ip));
		s.nat_port = p->dialed_port;
		c.macs = c.via == LOCAL_VIA_PEER;
		s.macs = s.via == LOCAL_VIA_PEER;
	}
	if (bpf_map_update_elem(&patu_local_flows, &sk, &s, BPF_NOEXIST)) {
		lcount(LC_ADMIT_FULL, 1);
		return;
	}
	if (bpf_map_update_elem(&patu_local_flows, k, &c, BPF_NOEXIST)) {
		bpf_map_delete_elem(&patu_local_flows, &sk);
		lcount(LC_ADMIT_FULL, 1);
		return;
	}
	lcount(LC_ADMIT, 1);
	if (nat)
		lcount(LC_ADMIT_NAT, 1);
}

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/* Where the translated fields are. */
struct local_pkt {
	__u32 l4off;   /* offset of the TCP header */
	__u32 seq;     /* host order */
	__u32 ack;     /* host order */
	__u32 payload; /* bytes after the TCP header */
	__u8 flags;
	__u8 v4;
};

/*
 * Rewrites one translated packet: the address and port the flow's nat
 * names (destination of the client's packets, source of the server's),
 * their checksums, the TTL or hop limit and the MACs of the routed hop.
 * Returns 0, or -1 when a helper failed.
 */
static __always_inline int local_nat(struct __sk_buff *skb, const struct local_flow *f, const struct local_key *k,
				     const struct local_pkt *pk)
{
	__u32 csum_off = pk->l4off + 16; /* offsetof(struct tcphdr, check) */
	int dst = f->nat == LOCAL_NAT_DST;
	__u16 old_port = dst ? k->dport : k->sport;
	__u32 port_off = pk->l4off + (dst ? 2 : 0);

	if (pk->v4) {
		__u32 old_ip = dst ? k->dst[3] : k->src[3];
		__u32 new_ip = f->nat_ip[3];
		__u32 ip_off = ETH_HLEN + (dst ? 16 : 12);
		__u16 ttl_old, ttl_new;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + 8, &ttl_old, 2))
			return -1;
		ttl_new = ttl_old;
		((__u8 *)&ttl_new)[0] -= 1;
		if (bpf_l4_csum_replace(skb, csum_off, old_ip, new_ip, BPF_F_PSEUDO_HDR | 4) ||
		    bpf_l4_csum_replace(skb, csum_off, old_port, f->nat_port, 2) ||
		    bpf_l3_csum_replace(skb, ETH_HLEN + 10, old_ip, new_ip, 4) ||
		    bpf_l3_csum_replace(skb, ETH_HLEN + 10, ttl_old, ttl_new, 2) ||
		    bpf_skb_store_bytes(skb, ip_off, &new_ip, 4, 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + 8, &ttl_new, 2, 0))
			return -1;
	} else {
		const __u32 *old_ip = dst ? k->dst : k->src;
		__u32 ip_off = ETH_HLEN + (dst ? 24 : 8);
		__u8 hop;
		__s64 diff;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + 7, &hop, 1))
			return -1;
		hop -= 1;
		diff = bpf_csum_diff((__be32 *)old_ip, 16, (__be32 *)f->nat_ip, 16, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, BPF_F_PSEUDO_HDR) ||
		    bpf_l4_csum_replace(skb, csum_off, old_port, f->nat_port, 2) ||
		    bpf_skb_store_bytes(skb, ip_off, f->nat_ip, 16, 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + 7, &hop, 1, 0))
			return -1;
	}
	if (bpf_skb_store_bytes(skb, port_off, &f->nat_port, 2, 0))
		return -1;
	if (f->macs && (bpf_skb_store_bytes(skb, 0, f->mac_dst, 6, 0) || bpf_skb_store_bytes(skb, 6, f->mac_src, 6, 0)))
		return -1;
	return 0;
}

/* A packet this large (a GSO packet of several segments) marks a bulk
 * direction; request/response messages of up to 16 KiB stay straight in. */
#define LOCAL_BULK_LEN 32768

/* Moves a direction to the backlog at its first large packet, when the
 * frame reaches the pod through its veth as it is: its MACs are rewritten
 * (translated flows) or already name the pod's interface. */
static __always_inline void local_via_backlog(struct __sk_buff *skb, struct local_flow *f)
{
	struct {
		__u32 a;
		__u16 b;
	} __attribute__((packed)) dst, want;

	__builtin_memcpy(&want, f->mac_dst, 6);
	if (!f->macs && (bpf_skb_load_bytes(skb, 0, &dst, 6) || dst.a != want.a || dst.b != want.b)) {
		f->via = LOCAL_VIA_PEER_ONLY;
		return;
	}
	f->via = LOCAL_VIA_BACKLOG;
}

/*
 * The local path for one TCP packet a pod sent, entering the node by
 * ifindex. Returns a tc verdict when the packet was redirected (or had to
 * be dropped), TC_NEXT (go on: the XDP reply check, then the normal path)
 * otherwise.
 */
/* tc: go on with the next program (tcx), or the classifier's default (tc). */
#define TC_NEXT -1

static __always_inline int local_tcp(struct __sk_buff *skb, struct local_key *k, const struct local_pkt *pk, __u32 len)
{
	struct local_pending *p, np = {};
	struct local_pkey pkey = {};
	struct route *r;
	struct local_flow *f;
	struct local_key rk;
	__u8 flags = pk->flags;
	__u64 now;

	f = bpf_map_lookup_elem(&patu_local_flows, k);
	if (f && f->from == skb->ifindex && (flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
		/* A new connection on the addresses and ports of one still
		 * listed (its client port reused within the close grace): its
		 * handshake goes through the node's netfilter like any other. */
		local_peer_key(k, f, &rk);
		bpf_map_delete_elem(&patu_local_flows, &rk);
		bpf_map_delete_elem(&patu_local_flows, k);
		f = NULL;
	}
	if (f) {
		if (f->from != skb->ifindex) {
			lcount(LC_WRONG_VETH, 1);
			return TC_NEXT;
		}
		now = bpf_ktime_get_ns();
		if (f->state == LOCAL_CLOSING) {
			if (now > f->expires) {
				local_peer_key(k, f, &rk);
				bpf_map_delete_elem(&patu_local_flows, &rk);
				bpf_map_delete_elem(&patu_local_flows, k);
				lcount(LC_EXPIRED, 1);
				return TC_NEXT;
			}
		} else if (flags & TCPF_RST) {
			local_close(skb, f, k, pk->v4, now, LC_CLOSE_RST);
		} else if (flags & TCPF_FIN) {
			f->fin = 1;
			local_peer_key(k, f, &rk);
			struct local_flow *o = bpf_map_lookup_elem(&patu_local_flows, &rk);
			if (o && o->fin)
				local_close(skb, f, k, pk->v4, now, LC_CLOSE_FIN);
		} else if (now - f->ct_seen > ct_refresh_ns) {
			f->ct_seen = now;
			ct_set_timeout(skb, k, pk->v4, ct_established_ms, LC_CT_REFRESH);
		}
		if (f->nat && local_nat(skb, f, k, pk)) {
			/* Half rewritten: never let that out. TCP sends it
			 * again. */
			lcount(LC_SKIP_NAT_FAIL, 1);
			return TC_ACT_SHOT;
		}
		lcount(LC_REDIRECT_PKTS, 1);
		lcount(LC_REDIRECT_BYTES, len);
		if (len > 65536)
			lcount(LC_REDIRECT_BIG, 1);
		if (f->via == LOCAL_VIA_PEER && len > LOCAL_BULK_LEN)
			local_via_backlog(skb, f);
		if (f->via == LOCAL_VIA_BACKLOG) {
			lcount(LC_BACKLOG_PKTS, 1);
			lcount(LC_BACKLOG_BYTES, len);
			return bpf_redirect(f->to, 0);
		}
		return bpf_redirect_peer(f->to, 0);
	}

	switch (flags & (TCPF_SYN | TCPF_ACK | TCPF_FIN | TCPF_RST)) {
	case TCPF_SYN:
		/* A client in a registered pod behind this very veth opens a
		 * connection, to whatever address: a pod, a Service, a port
		 * of the node. */
		r = bpf_map_lookup_elem(&patu_xdp_routes, (struct route_key *)k->src);
		if (!r || r->ifindex != skb->ifindex)
			return TC_NEXT;
		if (r->flags & ROUTE_NO_LOCAL) {
			lcount(LC_SKIP_OPT_OUT, 1);
			return TC_NEXT;
		}
		__builtin_memcpy(pkey.ip, k->src, sizeof(pkey.ip));
		pkey.isn = pk->seq;
		pkey.port = k->sport;
		/* A retransmitted SYN (same address, port and ISN, to the same
		 * address) keeps what the server's answer set: the client may
		 * still acknowledge that SYN-ACK, and resetting it here would
		 * leave the connection on the normal path. */
		p = bpf_map_lookup_elem(&patu_local_pending, &pkey);
		if (p && p->client_veth == skb->ifindex && addr_eq(p->dialed, k->dst) && p->dialed_port == k->dport) {
			lcount(LC_SYN, 1);
			return TC_NEXT;
		}
		np.state = LOCAL_SYN;
		np.client_veth = skb->ifindex;
		__builtin_memcpy(np.dialed, k->dst, sizeof(np.dialed));
		np.dialed_port = k->dport;
		np.seen = bpf_ktime_get_ns();
		bpf_map_update_elem(&patu_local_pending, &pkey, &np, BPF_ANY);
		lcount(LC_SYN, 1);
		return TC_NEXT;
	case TCPF_SYN | TCPF_ACK:
		/* A server in a registered pod answers: the SYN got through the
		 * node's netfilter (and its translations) to it. */
		r = bpf_map_lookup_elem(&patu_xdp_routes, (struct route_key *)k->src);
		if (!r || r->ifindex != skb->ifindex)
			return TC_NEXT;
		__builtin_memcpy(pkey.ip, k->dst, sizeof(pkey.ip));
		pkey.isn = pk->ack - 1;
		pkey.port = k->dport;
		p = bpf_map_lookup_elem(&patu_local_pending, &pkey);
		if (!p) {
			/* Its client is no pod of this node as the server sees
			 * it: another node, the node itself, or a pod the node
			 * masqueraded. */
			if (!bpf_map_lookup_elem(&patu_xdp_routes, (struct route_key *)k->dst))
				lcount(LC_SKIP_SNAT, 1);
			return TC_NEXT;
		}
		if (p->state != LOCAL_SYN && p->state != LOCAL_SYNACK)
			return TC_NEXT;
		if (r->flags & ROUTE_NO_LOCAL) {
			lcount(LC_SKIP_OPT_OUT, 1);
			return TC_NEXT;
		}
		p->state = LOCAL_SYNACK;
		p->server_veth = skb->ifindex;
		__builtin_memcpy(p->server, k->src, sizeof(p->server));
		p->server_port = k->sport;
		p->seen = bpf_ktime_get_ns();
		return TC_NEXT;
	case TCPF_ACK:
		/* The client acknowledges the SYN-ACK: it got through too. Only
		 * that ACK is looked for (no payload, the ISN's successor); it
		 * still takes the normal path, so that conntrack sees the
		 * connection established. What follows takes this one. */
		if (pk->payload)
			return TC_NEXT;
		__builtin_memcpy(pkey.ip, k->src, sizeof(pkey.ip));
		pkey.isn = pk->seq - 1;
		pkey.port = k->sport;
		p = bpf_map_lookup_elem(&patu_local_pending, &pkey);
		if (!p || p->state != LOCAL_SYNACK || p->client_veth != skb->ifindex ||
		    !addr_eq(p->dialed, k->dst) || p->dialed_port != k->dport)
			return TC_NEXT;
		np = *p;
		bpf_map_delete_elem(&patu_local_pending, &pkey);
		local_admit(k, &np);
		return TC_NEXT;
	}
	return TC_NEXT;
}

static __always_inline int local4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + ETH_HLEN;
	struct local_key k = {};
	struct local_pkt pk = {.v4 = 1};
	__u8 *tcp;

	/* IPv4 without options, not a fragment, TCP: the ports, sequence
	 * numbers, header length and flags are the first 14 bytes after the
	 * header. */
	if ((void *)(iph + 1) + 14 > data_end) {
		if (bpf_skb_pull_data(skb, ETH_HLEN + sizeof(*iph) + 14))
			return TC_NEXT;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		iph = data + ETH_HLEN;
		if ((void *)(iph + 1) + 14 > data_end)
			return TC_NEXT;
	}
	if (*(__u8 *)iph != 0x45 || iph->protocol != IPPROTO_TCP || (iph->frag_off & bpf_htons(0x3fff)))
		return TC_NEXT;
	tcp = (__u8 *)(iph + 1);
	k.src[2] = bpf_htonl(0xffff);
	k.src[3] = iph->saddr;
	k.dst[2] = bpf_htonl(0xffff);
	k.dst[3] = iph->daddr;
	k.sport = *(__u16 *)tcp;
	k.dport = *(__u16 *)(tcp + 2);
	pk.l4off = ETH_HLEN + sizeof(*iph);
	pk.seq = bpf_ntohl(*(__u32 *)(tcp + 4));
	pk.ack = bpf_ntohl(*(__u32 *)(tcp + 8));
	pk.flags = tcp[13];
	/* tot_len is 0 for a BIG TCP packet over 64 KiB: it has payload. */
	pk.payload = bpf_ntohs(iph->tot_len);
	pk.payload = pk.payload ? pk.payload - sizeof(*iph) - (tcp[12] >> 4) * 4 : 1;
	return local_tcp(skb, &k, &pk, skb->len);
}

static __always_inline int local6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct local_key k = {};
	struct local_pkt pk = {};
	__u32 off = ETH_HLEN + sizeof(*ip6), ext = 0;
	__u8 *tcp, nexthdr;

	/* TCP right after the fixed header, or after one hop-by-hop header:
	 * BIG TCP puts its jumbo payload length there. Every packet of an
	 * admitted flow must be seen here; other extension headers on TCP
	 * are not sent by Linux. */
	if (bpf_skb_pull_data(skb, off + 8 + 14) && bpf_skb_pull_data(skb, off + 14))
		return TC_NEXT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > data_end)
		return TC_NEXT;
	nexthdr = ip6->nexthdr;
	if (nexthdr == IPPROTO_HOPOPTS) {
		__u8 *hbh = data + off;

		if ((void *)(hbh + 2) > data_end)
			return TC_NEXT;
		nexthdr = hbh[0];
		ext = ((__u32)hbh[1] + 1) * 8;
		off += ext;
	}
	if (nexthdr != IPPROTO_TCP || off > 512)
		return TC_NEXT;
	tcp = data + off;
	if ((void *)(tcp + 14) > data_end)
		return TC_NEXT;
	__builtin_memcpy(k.src, &ip6->saddr, 16);
	__builtin_memcpy(k.dst, &ip6->daddr, 16);
	k.sport = *(__u16 *)tcp;
	k.dport = *(__u16 *)(tcp + 2);
	pk.l4off = off;
	pk.seq = bpf_ntohl(*(__u32 *)(tcp + 4));
	pk.ack = bpf_ntohl(*(__u32 *)(tcp + 8));
	pk.flags = tcp[13];
	pk.payload = bpf_ntohs(ip6->payload_len);
	pk.payload = pk.payload ? pk.payload - ext - (tcp[12] >> 4) * 4 : 1;
	return local_tcp(skb, &k, &pk, skb->len);
}

#endif /* PATU_LOCAL_H */
