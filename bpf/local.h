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
 * Conntrack then sees nothing of the flow, so everything of an admitted
 * flow must stay on this path until it ends: a later packet through
 * netfilter would be out of its window (INVALID, which kube-proxy drops).
 * Hence a plain hash (never evicted) for admitted flows, the conntrack
 * entry kept alive while the flow is, and at RST or the second FIN both
 * the flow and its conntrack entry given a short grace to finish.
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

/* An admitted direction. */
struct local_flow {
	__u32 to;       /* the peer pod's host-side veth: bpf_redirect_peer target */
	__u32 from;     /* the host-side veth this direction's packets enter by */
	__u8 state;     /* enum local_state: LOCAL_OPEN or LOCAL_CLOSING */
	__u8 fin;       /* this direction sent FIN */
	__u8 pad[6];
	__u64 expires;  /* LOCAL_CLOSING: ktime after which the entry goes */
	__u64 ct_seen;  /* ktime the conntrack entry was last kept alive */
};

/* A handshake in progress, keyed by the client's direction. */
struct local_pending {
	__u8 state;     /* LOCAL_SYN or LOCAL_SYNACK */
	__u8 pad[7];
	__u64 seen;     /* ktime of the last handshake packet */
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
	LC_CT_CLOSE,         /* conntrack entries given the closing grace */
	LC_CT_MISSING,       /* conntrack had no entry for an admitted flow */
	LC_REDIRECT_BIG,     /* packets over 64 KiB carried (BIG TCP) */
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
	__type(key, struct local_key);
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

/*
 * Conntrack's kfuncs (Linux 6.0+, in nf_conntrack). Weak: without
 * conntrack (module not loaded, or a kernel without them) the calls are
 * removed at load and flows are simply not kept in conntrack's view.
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

static __always_inline void local_reverse(const struct local_key *in, struct local_key *out)
{
	__builtin_memcpy(out->src, in->dst, sizeof(out->src));
	__builtin_memcpy(out->dst, in->src, sizeof(out->dst));
	out->sport = in->dport;
	out->dport = in->sport;
}

/* Sets the timeout of the flow's conntrack entry, when conntrack is there
 * and has one. */
static __always_inline void ct_set_timeout(struct __sk_buff *skb, const struct local_key *k, int v4, __u32 ms,
					   __u32 counter)
{
	struct bpf_ct_opts___patu opts = {.netns_id = -1 /* BPF_F_CURRENT_NETNS */, .l4proto = IPPROTO_TCP};
	struct bpf_sock_tuple t = {};
	struct nf_conn *ct;
	__u32 size;

	if (!bpf_skb_ct_lookup || !bpf_ct_release || !bpf_ct_change_timeout)
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

/* Both directions of an admitted flow go on closing, with the grace. */
static __always_inline void local_close(struct __sk_buff *skb, struct local_flow *f, const struct local_key *k,
					int v4, __u64 now, __u32 counter)
{
	struct local_key rk;
	struct local_flow *r;

	if (f->state == LOCAL_CLOSING)
		return;
	f->state = LOCAL_CLOSING;
	f->expires = now + close_grace_ns;
	local_reverse(k, &rk);
	r = bpf_map_lookup_elem(&patu_local_flows, &rk);
	if (r) {
		r->state = LOCAL_CLOSING;
		r->expires = f->expires;
	}
	lcount(counter, 1);
	ct_set_timeout(skb, k, v4, (__u32)(close_grace_ns / 1000000), LC_CT_CLOSE);
}

/* Admits the connection whose client direction is k: both directions get
 * their entry, the server's first so that the client's (which the caller
 * sees next) only exists when both do. */
static __always_inline void local_admit(const struct local_key *k, __u32 client_veth, __u32 server_veth)
{
	struct local_flow c = {}, s = {};
	struct local_key rk;

	local_reverse(k, &rk);
	s.to = client_veth;
	s.from = server_veth;
	s.state = LOCAL_OPEN;
	s.ct_seen = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&patu_local_flows, &rk, &s, BPF_NOEXIST)) {
		lcount(LC_ADMIT_FULL, 1);
		return;
	}
	c.to = server_veth;
	c.from = client_veth;
	c.state = LOCAL_OPEN;
	c.ct_seen = s.ct_seen;
	if (bpf_map_update_elem(&patu_local_flows, k, &c, BPF_NOEXIST)) {
		bpf_map_delete_elem(&patu_local_flows, &rk);
		lcount(LC_ADMIT_FULL, 1);
		return;
	}
	lcount(LC_ADMIT, 1);
}

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

/*
 * The local path for one TCP packet a pod sent, entering the node by
 * ifindex. Returns a tc verdict when the packet was redirected, -1 (go on:
 * the XDP reply check, then the normal path) otherwise.
 */
static __always_inline int local_tcp(struct __sk_buff *skb, struct local_key *k, __u8 flags, int v4, __u32 len)
{
	struct local_pending *p, np = {};
	struct route *src, *dst;
	struct local_flow *f;
	struct local_key rk;
	__u64 now;

	f = bpf_map_lookup_elem(&patu_local_flows, k);
	if (f) {
		if (f->from != skb->ifindex) {
			lcount(LC_WRONG_VETH, 1);
			return -1;
		}
		now = bpf_ktime_get_ns();
		if (f->state == LOCAL_CLOSING) {
			if (now > f->expires) {
				local_reverse(k, &rk);
				bpf_map_delete_elem(&patu_local_flows, &rk);
				bpf_map_delete_elem(&patu_local_flows, k);
				lcount(LC_EXPIRED, 1);
				return -1;
			}
		} else if (flags & TCPF_RST) {
			local_close(skb, f, k, v4, now, LC_CLOSE_RST);
		} else if (flags & TCPF_FIN) {
			f->fin = 1;
			local_reverse(k, &rk);
			struct local_flow *r = bpf_map_lookup_elem(&patu_local_flows, &rk);
			if (r && r->fin)
				local_close(skb, f, k, v4, now, LC_CLOSE_FIN);
		} else if (now - f->ct_seen > ct_refresh_ns) {
			f->ct_seen = now;
			ct_set_timeout(skb, k, v4, ct_established_ms, LC_CT_REFRESH);
		}
		lcount(LC_REDIRECT_PKTS, 1);
		lcount(LC_REDIRECT_BYTES, len);
		if (len > 65536)
			lcount(LC_REDIRECT_BIG, 1);
		return bpf_redirect_peer(f->to, 0);
	}

	switch (flags & (TCPF_SYN | TCPF_ACK | TCPF_FIN | TCPF_RST)) {
	case TCPF_SYN:
		/* A client opens: both ends must be registered pods, the
		 * client behind this very veth, neither opted out. */
		dst = bpf_map_lookup_elem(&patu_xdp_routes, (struct route_key *)k->dst);
		if (!dst)
			return -1;
		src = bpf_map_lookup_elem(&patu_xdp_routes, (struct route_key *)k->src);
		if (!src || src->ifindex != skb->ifindex)
			return -1;
		if ((src->flags | dst->flags) & ROUTE_NO_LOCAL) {
			lcount(LC_SKIP_OPT_OUT, 1);
			return -1;
		}
		np.state = LOCAL_SYN;
		np.seen = bpf_ktime_get_ns();
		bpf_map_update_elem(&patu_local_pending, k, &np, BPF_ANY);
		lcount(LC_SYN, 1);
		return -1;
	case TCPF_SYN | TCPF_ACK:
		/* The server answers: it got through the node's netfilter. */
		local_reverse(k, &rk);
		p = bpf_map_lookup_elem(&patu_local_pending, &rk);
		if (p && p->state == LOCAL_SYN) {
			p->state = LOCAL_SYNACK;
			p->seen = bpf_ktime_get_ns();
		}
		return -1;
	case TCPF_ACK:
		/* The client acknowledges the SYN-ACK: it got through too. This
		 * ACK still takes the normal path, so that conntrack sees the
		 * connection established; what follows takes this one. */
		p = bpf_map_lookup_elem(&patu_local_pending, k);
		if (!p || p->state != LOCAL_SYNACK)
			return -1;
		bpf_map_delete_elem(&patu_local_pending, k);
		dst = bpf_map_lookup_elem(&patu_xdp_routes, (struct route_key *)k->dst);
		if (!dst || (dst->flags & ROUTE_NO_LOCAL))
			return -1;
		local_admit(k, skb->ifindex, dst->ifindex);
		return -1;
	}
	return -1;
}


/* tc: go on with the next program (tcx), or the classifier's default (tc). */
#define TC_NEXT -1

static __always_inline int local4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + ETH_HLEN;
	struct local_key k = {};
	__u8 *tcp;

	/* IPv4 without options, not a fragment, TCP: the ports and flags
	 * are the first 14 bytes after the header. */
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
	return local_tcp(skb, &k, tcp[13], 1, skb->len);
}

static __always_inline int local6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct local_key k = {};
	__u32 off = ETH_HLEN + sizeof(*ip6);
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
		off += ((__u32)hbh[1] + 1) * 8;
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
	return local_tcp(skb, &k, tcp[13], 0, skb->len);
}

#endif /* PATU_LOCAL_H */
