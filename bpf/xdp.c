//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Patu's packet programs: the fast path for traffic entering the node, and
 * the program on each pod's host-side veth.
 *
 *  xdp (uplink)   a frame for a registered pod address, or for a hostPort of
 *                 the node, is rewritten (MACs, TTL / hop limit, for a
 *                 hostPort the destination address and port with their
 *                 checksums) and redirected into the pod's host-side veth,
 *                 skipping the bridge, netfilter and conntrack. The flow is
 *                 recorded so that its replies can skip them too.
 *                 Everything else passes to the kernel untouched.
 *  tcx ingress    on each pod's host-side veth (packets leaving the pod):
 *  (from pod)     TCP between two pods of the node takes the local packet
 *                 path (local.h): admitted flows go straight into the
 *                 other pod. Then replies of a flow XDP delivered get
 *                 their source translated back (hostPort flows) and, when
 *                 the kernel's FIB sends them out of the uplink the flow
 *                 came in on, go straight out of it. Everything else goes
 *                 on to the normal path; it costs one hash lookup (TCP)
 *                 and one LRU lookup.
 *
 * Per-packet work is the product: one hash lookup per redirected frame for
 * the route, one for the flow (an insert only when it is missing), port
 * checks are inlined array accesses, counters per CPU.
 */
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>

#include "xdp.h"
#include "local.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10

#define IP_MF_OFFSET 0x3fff /* IP_MF | IP_OFFSET, host order */

/* ------------------------------------------------------------- helpers */

static __always_inline int pass(__u32 reason)
{
	xcount(reason);
	return XDP_PASS;
}

/* Is port (network order) of proto in the (kind) plane of patu_xdp_ports? */
static __always_inline int port_bit(__u32 kind, __u8 proto, __u16 port_net)
{
	__u16 port = bpf_ntohs(port_net);
	__u32 idx = (kind * 2 + (proto == IPPROTO_UDP)) * PORT_PLANE_WORDS + (port >> 6);
	__u64 *w = bpf_map_lookup_elem(&patu_xdp_ports, &idx);

	return w && ((*w >> (port & 63)) & 1);
}

/*
 * Incremental checksum update (RFC 1624): HC' = ~(~HC + ~m + m') summed
 * over every changed 16-bit word. The sum is byte-order neutral as long as
 * every word is loaded and stored the same way, so words are used as they
 * sit in memory.
 */
static __always_inline __u32 csum_delta16(__u32 d, __u16 from, __u16 to)
{
	return d + (__u16)~from + to;
}

static __always_inline __u32 csum_delta32(__u32 d, __u32 from, __u32 to)
{
	d = csum_delta16(d, from >> 16, to >> 16);
	return csum_delta16(d, from & 0xffff, to & 0xffff);
}

static __always_inline __u16 csum_apply(__u16 check, __u32 d)
{
	__u32 s = (__u16)~check + d;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

static __always_inline void set_macs(struct ethhdr *eth, const __u8 *dst, const __u8 *src)
{
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
}

/*
 * Records a flow XDP delivers, keyed by its replies' 5-tuple. Established
 * flows cost the lookup only: the entry is written when missing or when
 * it says something else (a reused 5-tuple).
 */
static __always_inline void update_flow(struct flow *f, const struct flow_key *k, const struct flow *want)
{
	if (f && f->flags == want->flags && f->uplink == want->uplink &&
	    f->orig_port == want->orig_port && f->orig_ip[3] == want->orig_ip[3] &&
	    f->orig_ip[2] == want->orig_ip[2] && f->orig_ip[1] == want->orig_ip[1] &&
	    f->orig_ip[0] == want->orig_ip[0])
		return;
	if (bpf_map_update_elem(&patu_xdp_flows, k, want, BPF_ANY))
		xcount(XC_FLOW_INSERT_FAIL);
	else
		xcount(XC_FLOW_INSERT);
}

static __always_inline void record_flow(const struct flow_key *k, const struct flow *want)
{
	update_flow(bpf_map_lookup_elem(&patu_xdp_flows, k), k, want);
}

/*
 * A hostPort translates new connections only, as the portmap plugin's
 * DNAT rules (consulted for a conntrack entry's first packet) do: a TCP
 * segment that is not a SYN and has no flow is not a hostPort connection
 * (e.g. the reply to an outgoing connection masqueraded to the same node
 * port), or one whose flow was evicted, which the normal path serves.
 */
#define TCP_FLAGS_SYN_ACK 0x12
#define TCP_FLAGS_SYN 0x02

static __always_inline int record_nat_flow(const struct flow_key *k, const struct flow *want, __u8 tcp_flags)
{
	struct flow *f = bpf_map_lookup_elem(&patu_xdp_flows, k);

	if (!f && k->proto == IPPROTO_TCP && (tcp_flags & TCP_FLAGS_SYN_ACK) != TCP_FLAGS_SYN)
		return -1;
	update_flow(f, k, want);
	return 0;
}

static __always_inline int redirect_to(const struct route *r, __u32 counter)
{
	long ret = bpf_redirect(r->ifindex, 0);

	if (ret != XDP_REDIRECT) {
		xcount(XC_REDIRECT_ERROR);
		return XDP_PASS;
	}
	xcount(counter);
	return XDP_REDIRECT;
}

/* A hostPort for (dst, proto, port)? The exact address first, then "any",
 * which must only match packets addressed to the node itself. */
static __always_inline struct hostport *find_hostport(struct xdp_md *ctx, struct bpf_fib_lookup *fib,
						      const __u32 *dst, __u8 proto, __u16 dport, int *reason, int v4)
{
	struct hostport_key hk = {};
	struct hostport *hp;

	hk.ip[0] = dst[0];
	hk.ip[1] = dst[1];
	hk.ip[2] = dst[2];
	hk.ip[3] = dst[3];
	hk.port = dport;
	hk.proto = proto;
	hp = bpf_map_lookup_elem(&patu_xdp_hostports, &hk);
	if (hp)
		return hp;
	/* "Any" is the unspecified address of the packet's family:
	 * ::ffff:0.0.0.0 for IPv4, :: for IPv6. */
	if (!v4) {
		hk.ip[0] = 0;
		hk.ip[1] = 0;
		hk.ip[2] = 0;
	}
	hk.ip[3] = 0;
	hp = bpf_map_lookup_elem(&patu_xdp_hostports, &hk);
	if (!hp) {
		*reason = XC_PASS_NO_MATCH;
		return 0;
	}
	/* The FIB says "not forwarded" for local (and broadcast; multicast
	 * MACs were passed already) destinations: what the portmap plugin's
	 * "--dst-type LOCAL" matches. Only paid on an "any" hit. */
	if (bpf_fib_lookup(ctx, fib, sizeof(*fib), 0) != BPF_FIB_LKUP_RET_NOT_FWDED) {
		*reason = XC_PASS_NOT_LOCAL;
		return 0;
	}
	return hp;
}

/* ---------------------------------------------------------------- IPv4 */

static __always_inline int xdp4(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
	struct iphdr *iph = (void *)(eth + 1);
	struct flow_key fk = {};
	struct flow fl = {};
	struct route_key rk = {};
	struct route *r;
	__u16 *ports, *csum;
	__u8 tcp_flags = 0;
	__u16 old_ttl;
	__u32 d;

	if ((void *)(iph + 1) > data_end)
		return pass(XC_PASS_SHORT);
	if (*(__u8 *)iph != 0x45)
		return pass(XC_PASS_IP_OPTIONS);
	if (iph->frag_off & bpf_htons(IP_MF_OFFSET))
		return pass(XC_PASS_FRAGMENT);
	if (iph->protocol == IPPROTO_TCP) {
		if ((void *)iph + sizeof(*iph) + sizeof(struct tcphdr) > data_end)
			return pass(XC_PASS_SHORT);
		csum = &((struct tcphdr *)(iph + 1))->check;
		tcp_flags = ((__u8 *)(iph + 1))[13];
	} else if (iph->protocol == IPPROTO_UDP) {
		if ((void *)iph + sizeof(*iph) + sizeof(struct udphdr) > data_end)
			return pass(XC_PASS_SHORT);
		csum = &((struct udphdr *)(iph + 1))->check;
	} else if (iph->protocol == IPPROTO_ICMP) {
		return pass(XC_PASS_ICMP);
	} else {
		return pass(XC_PASS_PROTO);
	}
	if (iph->ttl <= 1)
		return pass(XC_PASS_TTL);
	ports = (__u16 *)(iph + 1); /* [0] source, [1] destination */

	rk.ip[2] = bpf_htonl(0xffff);
	rk.ip[3] = iph->daddr;
	fl.uplink = ctx->ingress_ifindex;
	fk.src[2] = bpf_htonl(0xffff);
	fk.dst[2] = bpf_htonl(0xffff);
	fk.dst[3] = iph->saddr;
	fk.dport = ports[0];
	fk.proto = iph->protocol;

	r = bpf_map_lookup_elem(&patu_xdp_routes, &rk);
	if (r) {
		if (r->flags & ROUTE_EXCLUDED)
			return pass(XC_PASS_EXCLUDED_POD);
		if (r->flags & ROUTE_NO_MACS)
			return pass(XC_PASS_NO_ROUTE);
		if (port_bit(PORTS_EXCLUDED, iph->protocol, ports[1]))
			return pass(XC_PASS_EXCLUDED_PORT);
		fk.src[3] = iph->daddr;
		fk.sport = ports[1];
		record_flow(&fk, &fl);
		old_ttl = *(__u16 *)&iph->ttl;
		iph->ttl--;
		iph->check = csum_apply(iph->check, csum_delta16(0, old_ttl, *(__u16 *)&iph->ttl));
		set_macs(eth, r->pod_mac, r->host_mac);
		return redirect_to(r, XC_REDIRECT_POD);
	}

	/* Not a pod: a hostPort? The bit set answers "no" for nearly all
	 * traffic to the node without a hash lookup. */
	if (!port_bit(PORTS_HOSTPORT, iph->protocol, ports[1]))
		return pass(XC_PASS_NO_MATCH);
	{
		struct bpf_fib_lookup fib = {};
		struct hostport *hp;
		__u32 pod_ip, old_ip = iph->daddr;
		__u16 pod_port, old_port = ports[1];
		int reason = XC_PASS_NO_MATCH;

		fib.family = AF_INET;
		fib.ifindex = ctx->ingress_ifindex;
		fib.l4_protocol = iph->protocol;
		fib.ipv4_src = iph->saddr;
		fib.ipv4_dst = iph->daddr;
		hp = find_hostport(ctx, &fib, rk.ip, iph->protocol, ports[1], &reason, 1);
		if (!hp)
			return pass(reason);
		if (port_bit(PORTS_EXCLUDED, iph->protocol, ports[1]))
			return pass(XC_PASS_EXCLUDED_PORT);
		pod_ip = hp->pod_ip[3];
		pod_port = hp->pod_port;
		rk.ip[3] = pod_ip;
		r = bpf_map_lookup_elem(&patu_xdp_routes, &rk);
		if (!r)
			return pass(XC_PASS_NO_ROUTE);
		if (r->flags & ROUTE_EXCLUDED)
			return pass(XC_PASS_EXCLUDED_POD);
		if (r->flags & ROUTE_NO_MACS)
			return pass(XC_PASS_NO_ROUTE);

		fk.src[3] = pod_ip;
		fk.sport = pod_port;
		fl.flags = FLOW_NAT;
		fl.orig_ip[2] = bpf_htonl(0xffff);
		fl.orig_ip[3] = old_ip;
		fl.orig_port = old_port;
		if (record_nat_flow(&fk, &fl, tcp_flags))
			return pass(XC_PASS_NOT_NEW);

		/* L4: pseudo-header address and port; a zero UDP checksum
		 * (none) stays zero, a computed zero is sent as 0xffff. */
		if (!(iph->protocol == IPPROTO_UDP && *csum == 0)) {
			d = csum_delta32(0, old_ip, pod_ip);
			d = csum_delta16(d, old_port, pod_port);
			*csum = csum_apply(*csum, d);
			if (iph->protocol == IPPROTO_UDP && *csum == 0)
				*csum = 0xffff;
		}
		ports[1] = pod_port;
		/* L3: address and TTL. */
		old_ttl = *(__u16 *)&iph->ttl;
		iph->ttl--;
		d = csum_delta32(0, old_ip, pod_ip);
		d = csum_delta16(d, old_ttl, *(__u16 *)&iph->ttl);
		iph->daddr = pod_ip;
		iph->check = csum_apply(iph->check, d);
		set_macs(eth, r->pod_mac, r->host_mac);
		return redirect_to(r, XC_REDIRECT_HOSTPORT);
	}
}

/* ---------------------------------------------------------------- IPv6 */

static __always_inline int ipv6_ext(__u8 nh)
{
	switch (nh) {
	case 0:   /* hop-by-hop */
	case 43:  /* routing */
	case 44:  /* fragment */
	case 51:  /* AH */
	case 60:  /* destination options */
	case 135: /* mobility */
	case 139: /* HIP */
	case 140: /* shim6 */
		return 1;
	}
	return 0;
}

static __always_inline int xdp6(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct flow_key fk = {};
	struct flow fl = {};
	struct route_key rk = {};
	struct route *r;
	__u16 *ports, *csum;
	__u8 tcp_flags = 0;
	__u8 nh;
	__u32 d;

	if ((void *)(ip6 + 1) > data_end)
		return pass(XC_PASS_SHORT);
	nh = ip6->nexthdr;
	if (nh == IPPROTO_TCP) {
		if ((void *)(ip6 + 1) + sizeof(struct tcphdr) > data_end)
			return pass(XC_PASS_SHORT);
		csum = &((struct tcphdr *)(ip6 + 1))->check;
		tcp_flags = ((__u8 *)(ip6 + 1))[13];
	} else if (nh == IPPROTO_UDP) {
		if ((void *)(ip6 + 1) + sizeof(struct udphdr) > data_end)
			return pass(XC_PASS_SHORT);
		csum = &((struct udphdr *)(ip6 + 1))->check;
	} else if (nh == IPPROTO_ICMPV6) {
		return pass(XC_PASS_ICMP);
	} else if (ipv6_ext(nh)) {
		return pass(XC_PASS_IPV6_EXT);
	} else {
		return pass(XC_PASS_PROTO);
	}
	if (ip6->hop_limit <= 1)
		return pass(XC_PASS_TTL);
	ports = (__u16 *)(ip6 + 1);

	__builtin_memcpy(rk.ip, &ip6->daddr, 16);
	fl.uplink = ctx->ingress_ifindex;
	__builtin_memcpy(fk.dst, &ip6->saddr, 16);
	fk.dport = ports[0];
	fk.proto = nh;

	r = bpf_map_lookup_elem(&patu_xdp_routes, &rk);
	if (r) {
		if (r->flags & ROUTE_EXCLUDED)
			return pass(XC_PASS_EXCLUDED_POD);
		if (r->flags & ROUTE_NO_MACS)
			return pass(XC_PASS_NO_ROUTE);
		if (port_bit(PORTS_EXCLUDED, nh, ports[1]))
			return pass(XC_PASS_EXCLUDED_PORT);
		__builtin_memcpy(fk.src, rk.ip, 16);
		fk.sport = ports[1];
		record_flow(&fk, &fl);
		ip6->hop_limit--; /* not covered by any checksum */
		set_macs(eth, r->pod_mac, r->host_mac);
		return redirect_to(r, XC_REDIRECT_POD);
	}

	if (!port_bit(PORTS_HOSTPORT, nh, ports[1]))
		return pass(XC_PASS_NO_MATCH);
	{
		struct bpf_fib_lookup fib = {};
		struct hostport *hp;
		struct route_key pod;
		__u16 pod_port, old_port = ports[1];
		int reason = XC_PASS_NO_MATCH;
		int i;

		fib.family = AF_INET6;
		fib.ifindex = ctx->ingress_ifindex;
		fib.l4_protocol = nh;
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
		hp = find_hostport(ctx, &fib, rk.ip, nh, ports[1], &reason, 0);
		if (!hp)
			return pass(reason);
		if (port_bit(PORTS_EXCLUDED, nh, ports[1]))
			return pass(XC_PASS_EXCLUDED_PORT);
		__builtin_memcpy(pod.ip, hp->pod_ip, 16);
		pod_port = hp->pod_port;
		r = bpf_map_lookup_elem(&patu_xdp_routes, &pod);
		if (!r)
			return pass(XC_PASS_NO_ROUTE);
		if (r->flags & ROUTE_EXCLUDED)
			return pass(XC_PASS_EXCLUDED_POD);
		if (r->flags & ROUTE_NO_MACS)
			return pass(XC_PASS_NO_ROUTE);

		__builtin_memcpy(fk.src, pod.ip, 16);
		fk.sport = pod_port;
		fl.flags = FLOW_NAT;
		__builtin_memcpy(fl.orig_ip, rk.ip, 16);
		fl.orig_port = old_port;
		if (record_nat_flow(&fk, &fl, tcp_flags))
			return pass(XC_PASS_NOT_NEW);

		/* The UDP checksum is mandatory over IPv6: always updated. */
		d = csum_delta16(0, old_port, pod_port);
#pragma unroll
		for (i = 0; i < 4; i++)
			d = csum_delta32(d, rk.ip[i], pod.ip[i]);
		*csum = csum_apply(*csum, d);
		if (nh == IPPROTO_UDP && *csum == 0)
			*csum = 0xffff;
		ports[1] = pod_port;
		__builtin_memcpy(&ip6->daddr, pod.ip, 16);
		ip6->hop_limit--;
		set_macs(eth, r->pod_mac, r->host_mac);
		return redirect_to(r, XC_REDIRECT_HOSTPORT);
	}
}

SEC("xdp")
int patu_xdp_uplink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return pass(XC_PASS_SHORT);
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return pass(XC_PASS_VLAN);
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return pass(XC_PASS_NOT_IP);
	if (eth->h_dest[0] & 1)
		return pass(XC_PASS_L2_MULTICAST);
	if (proto == bpf_htons(ETH_P_IP))
		return xdp4(ctx, eth, data_end);
	return xdp6(ctx, eth, data_end);
}

/* ------------------------------------------------------------ tc reply */

#define L3_OFF ETH_HLEN

/*
 * Sends a reply out of the uplink its flow came in on, when the kernel's
 * FIB agrees: TTL / hop limit decremented, MACs from the FIB (or the
 * kernel resolving the neighbour). Anything else (another egress, MTU, a
 * local destination) is left to the normal path.
 */
static __always_inline int reply_out(struct __sk_buff *skb, struct bpf_fib_lookup *fib, __u32 uplink, int v4)
{
	void *data, *data_end;
	struct ethhdr *eth;
	long rc;

	rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || fib->ifindex != uplink)
		goto normal;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if (v4) {
		struct iphdr *iph = (void *)(eth + 1);
		__u16 old;

		if ((void *)(iph + 1) > data_end || iph->ttl <= 1)
			goto normal;
		old = *(__u16 *)&iph->ttl;
		iph->ttl--;
		iph->check = csum_apply(iph->check, csum_delta16(0, old, *(__u16 *)&iph->ttl));
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
			goto normal;
		ip6->hop_limit--;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {};

		nh.nh_family = fib->family;
		__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, 16); /* ipv4_nh shares the first word */
		xcount(XC_REPLY_REDIRECT_NEIGH);
		return bpf_redirect_neigh(fib->ifindex, &nh, sizeof(nh), 0);
	}
	set_macs(eth, fib->dmac, fib->smac);
	xcount(XC_REPLY_REDIRECT);
	return bpf_redirect(fib->ifindex, 0);
normal:
	xcount(XC_REPLY_PASS);
	return TC_NEXT;
}

static __always_inline int reply4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + L3_OFF;
	struct bpf_fib_lookup fib = {};
	struct flow_key fk = {};
	struct flow *f;
	__u32 csum_off, l4_flags, uplink, new_ip, old_ip;
	__u16 *ports, new_port, old_port;
	__u8 proto;

	if ((void *)(iph + 1) + 4 > data_end) {
		/* Headers not in the linear area, or a short packet. Only
		 * the ports are read directly; the checksum helpers pull
		 * what they write. */
		if (bpf_skb_pull_data(skb, L3_OFF + sizeof(*iph) + 4))
			return TC_NEXT;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		iph = data + L3_OFF;
		if ((void *)(iph + 1) + 4 > data_end)
			return TC_NEXT;
	}
	proto = iph->protocol;
	if (*(__u8 *)iph != 0x45 || (iph->frag_off & bpf_htons(IP_MF_OFFSET)) ||
	    (proto != IPPROTO_TCP && proto != IPPROTO_UDP))
		return TC_NEXT;
	ports = (__u16 *)(iph + 1);
	if ((void *)(ports + 2) > data_end)
		return TC_NEXT;
	fk.src[2] = bpf_htonl(0xffff);
	fk.src[3] = iph->saddr;
	fk.dst[2] = bpf_htonl(0xffff);
	fk.dst[3] = iph->daddr;
	fk.sport = ports[0];
	fk.dport = ports[1];
	fk.proto = proto;
	f = bpf_map_lookup_elem(&patu_xdp_flows, &fk);
	if (!f)
		return TC_NEXT;
	uplink = f->uplink;
	fib.family = AF_INET;
	fib.ifindex = skb->ingress_ifindex;
	fib.l4_protocol = proto;
	fib.ipv4_src = iph->saddr;
	fib.ipv4_dst = iph->daddr;
	if (f->flags & FLOW_NAT) {
		old_ip = iph->saddr;
		new_ip = f->orig_ip[3];
		old_port = ports[0];
		new_port = f->orig_port;
		if (proto == IPPROTO_TCP) {
			csum_off = L3_OFF + sizeof(*iph) + offsetof(struct tcphdr, check);
			l4_flags = 0;
		} else {
			csum_off = L3_OFF + sizeof(*iph) + offsetof(struct udphdr, check);
			l4_flags = BPF_F_MARK_MANGLED_0;
		}
		/* Helpers, not direct writes: they keep CHECKSUM_PARTIAL
		 * packets (the pod's offload) right. */
		if (bpf_l4_csum_replace(skb, csum_off, old_ip, new_ip, l4_flags | BPF_F_PSEUDO_HDR | 4) ||
		    bpf_l4_csum_replace(skb, csum_off, old_port, new_port, l4_flags | 2) ||
		    bpf_l3_csum_replace(skb, L3_OFF + offsetof(struct iphdr, check), old_ip, new_ip, 4) ||
		    bpf_skb_store_bytes(skb, L3_OFF + offsetof(struct iphdr, saddr), &new_ip, 4, 0) ||
		    bpf_skb_store_bytes(skb, L3_OFF + sizeof(*iph), &new_port, 2, 0))
			return TC_ACT_SHOT; /* half translated: never send that */
		xcount(XC_REPLY_NAT);
		fib.ipv4_src = new_ip;
	}
	return reply_out(skb, &fib, uplink, 1);
}

static __always_inline int reply6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + L3_OFF;
	struct bpf_fib_lookup fib = {};
	struct flow_key fk = {};
	struct flow *f;
	__u32 csum_off, l4_flags, uplink, new_ip[4];
	__u16 *ports, new_port, old_port;
	__s64 diff;
	__u8 proto;

	if ((void *)(ip6 + 1) + 4 > data_end) {
		if (bpf_skb_pull_data(skb, L3_OFF + sizeof(*ip6) + 4))
			return TC_NEXT;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		ip6 = data + L3_OFF;
		if ((void *)(ip6 + 1) + 4 > data_end)
			return TC_NEXT;
	}
	proto = ip6->nexthdr;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return TC_NEXT;
	ports = (__u16 *)(ip6 + 1);
	if ((void *)(ports + 2) > data_end)
		return TC_NEXT;
	__builtin_memcpy(fk.src, &ip6->saddr, 16);
	__builtin_memcpy(fk.dst, &ip6->daddr, 16);
	fk.sport = ports[0];
	fk.dport = ports[1];
	fk.proto = proto;
	f = bpf_map_lookup_elem(&patu_xdp_flows, &fk);
	if (!f)
		return TC_NEXT;
	uplink = f->uplink;
	fib.family = AF_INET6;
	fib.ifindex = skb->ingress_ifindex;
	fib.l4_protocol = proto;
	__builtin_memcpy(fib.ipv6_src, fk.src, 16);
	__builtin_memcpy(fib.ipv6_dst, fk.dst, 16);
	if (f->flags & FLOW_NAT) {
		__builtin_memcpy(new_ip, f->orig_ip, 16);
		old_port = ports[0];
		new_port = f->orig_port;
		if (proto == IPPROTO_TCP) {
			csum_off = L3_OFF + sizeof(*ip6) + offsetof(struct tcphdr, check);
			l4_flags = 0;
		} else {
			csum_off = L3_OFF + sizeof(*ip6) + offsetof(struct udphdr, check);
			l4_flags = BPF_F_MARK_MANGLED_0;
		}
		diff = bpf_csum_diff(fk.src, 16, new_ip, 16, 0);
		if (diff < 0 ||
		    bpf_l4_csum_replace(skb, csum_off, 0, diff, l4_flags | BPF_F_PSEUDO_HDR) ||
		    bpf_l4_csum_replace(skb, csum_off, old_port, new_port, l4_flags | 2) ||
		    bpf_skb_store_bytes(skb, L3_OFF + offsetof(struct ipv6hdr, saddr), new_ip, 16, 0) ||
		    bpf_skb_store_bytes(skb, L3_OFF + sizeof(*ip6), &new_port, 2, 0))
			return TC_ACT_SHOT;
		xcount(XC_REPLY_NAT);
		__builtin_memcpy(fib.ipv6_src, new_ip, 16);
	}
	return reply_out(skb, &fib, uplink, 0);
}

SEC("tcx/ingress")
int patu_from_pod(struct __sk_buff *skb)
{
	int rc;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		rc = local4(skb);
		return rc != TC_NEXT ? rc : reply4(skb);
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		rc = local6(skb);
		return rc != TC_NEXT ? rc : reply6(skb);
	}
	return TC_NEXT;
}

/* Referenced only so that their BTF reaches the Go bindings. */
const enum xdp_counter *unused_xdp_counter __attribute__((unused));
const enum route_flags *unused_route_flags __attribute__((unused));
const enum flow_flags *unused_flow_flags __attribute__((unused));
const enum uplink_mode *unused_uplink_mode __attribute__((unused));
const enum port_kind *unused_port_kind __attribute__((unused));
const enum local_state *unused_local_state __attribute__((unused));
const enum local_counter *unused_local_counter __attribute__((unused));
const enum local_nat *unused_local_nat __attribute__((unused));
const enum local_via *unused_local_via __attribute__((unused));
const struct settings *unused_settings __attribute__((unused));
