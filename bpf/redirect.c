//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Patu's socket-level short-circuit for node-local TCP.
 *
 *  sockops   puts established sockets whose both ends are registered local
 *            endpoints into patu_socks and publishes a record the peer reads.
 *  sk_msg    decides, per direction, whether a send goes straight to the
 *            peer's ingress queue or over TCP, so that no byte is reordered,
 *            lost or queued without bound.
 *  tp_btf    marks sockets whose application reads with recvmsg(2): only
 *            those are redirected to, as splice(2) cannot see redirected
 *            bytes.
 */
#include "patu.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Backpressure marks. A direction falls back to TCP when the receiver has
 * more than rcvbuf << bp_shift bytes queued (at least bp_floor), and comes
 * back once it has read everything sent over TCP and is below half of that.
 * The floor matches what the bridge path lets a writer queue (~2 MB) so
 * that a reader merely slower than its writer rarely trips it.
 */
const volatile __u32 bp_shift = 1;
const volatile __u32 bp_floor = 2 << 20;

/*
 * Whether the kernel charges redirected bytes to the receiver's
 * sk_rmem_alloc (Linux 6.13+; Load probes it). Where it does not, the
 * queue is counted here instead: bytes each sender redirected, minus what
 * the receiver's application read of them (all it read, less what TCP
 * delivered: its copied_seq moves only for TCP bytes).
 */
const volatile __u8 rmem_charged = 1;

/*
 * Fault injection for tests: when non-zero, the record of each accepted
 * socket, which is what lets senders find it, stays invisible for a random
 * 0..test_late_peer_ns after establishment, so the peer of a connection is
 * late as it can be when its establishment races the first send.
 */
const volatile __u64 test_late_peer_ns = 0;

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

static __always_inline void fallback(__u32 reason, __u32 size)
{
	if (reason >= FB_MAX)
		reason = FB_UNTRACKED;
	count(CNT_FALLBACK_MSGS + reason, 1);
	count(CNT_FALLBACK_BYTES + reason, size);
}

static __always_inline __u32 high_mark(int rcvbuf)
{
	__u32 mark = (__u32)rcvbuf << bp_shift;

	return mark > bp_floor ? mark : bp_floor;
}

/* ---------------------------------------------------------------- sockops */

/* One function per family: inlined together, clang merges the context
 * loads of both branches into one computed pointer, which the verifier
 * refuses for context accesses. */
static __noinline int fill_key6(struct bpf_sock_ops *skops, struct sock_key *key)
{
	key->local_ip[0] = skops->local_ip6[0];
	key->local_ip[1] = skops->local_ip6[1];
	key->local_ip[2] = skops->local_ip6[2];
	key->local_ip[3] = skops->local_ip6[3];
	key->remote_ip[0] = skops->remote_ip6[0];
	key->remote_ip[1] = skops->remote_ip6[1];
	key->remote_ip[2] = skops->remote_ip6[2];
	key->remote_ip[3] = skops->remote_ip6[3];
	return 0;
}

static __noinline int fill_key4(struct bpf_sock_ops *skops, struct sock_key *key)
{
	key->local_ip[2] = bpf_htonl(0xffff);
	key->local_ip[3] = skops->local_ip4;
	key->remote_ip[2] = bpf_htonl(0xffff);
	key->remote_ip[3] = skops->remote_ip4;
	return 0;
}

static __always_inline int fill_key(struct bpf_sock_ops *skops, struct sock_key *key)
{
	__u32 family = skops->family;

	if (family == AF_INET)
		fill_key4(skops, key);
	else if (family == AF_INET6)
		fill_key6(skops, key);
	else
		return -1;
	key->local_port = skops->local_port;
	key->remote_port = bpf_ntohl(skops->remote_port);
	return 0;
}

static __always_inline void swap_key(const struct sock_key *in, struct sock_key *out)
{
	__builtin_memcpy(out->local_ip, in->remote_ip, sizeof(out->local_ip));
	__builtin_memcpy(out->remote_ip, in->local_ip, sizeof(out->remote_ip));
	out->local_port = in->remote_port;
	out->remote_port = in->local_port;
}

/* Both ends registered, both opted in to the socket path, neither opted
 * out? A socket in the socket map reads through the kernel's sockmap
 * receive path (no splice(2), EAGAIN for blocking readers on spurious
 * wake-ups, no FIONREAD), so only sockets of pods that asked for it go
 * there. */
static __always_inline int eligible(const struct sock_key *key)
{
	struct endpoint *l, *r;

	l = bpf_map_lookup_elem(&patu_endpoints, (struct endpoint_key *)key->local_ip);
	r = bpf_map_lookup_elem(&patu_endpoints, (struct endpoint_key *)key->remote_ip);
	if (!l || !r) {
		count(CNT_SKIP_NOT_LOCAL, 1);
		return 0;
	}
	if ((l->flags | r->flags) & ENDPOINT_NO_REDIRECT) {
		count(CNT_SKIP_OPT_OUT, 1);
		return 0;
	}
	if (!(l->flags & r->flags & ENDPOINT_SOCKET)) {
		count(CNT_SKIP_NOT_SOCKET, 1);
		return 0;
	}
	return 1;
}

static __always_inline void insert(struct bpf_sock_ops *skops, struct tcp_sock *tp,
				   struct sk_state *st, int passive)
{
	struct sock_rec rec = {};

	/* Publish the record before the map entry: a sender that finds the
	 * record but not the entry falls back to TCP, never the reverse. */
	rec.addr = (__u64)tp;
	rec.cookie = bpf_get_socket_cookie(skops);
	rec.base_copied = tp->copied_seq;
	if (passive && test_late_peer_ns)
		rec.visible_after = bpf_ktime_get_ns() + bpf_get_prandom_u32() % test_late_peer_ns;
	if (bpf_map_update_elem(&patu_sock_recs, &st->own_key, &rec, BPF_ANY)) {
		count(CNT_INSERT_FAIL_STATE, 1);
		return;
	}
	/* NOEXIST: replacing an entry would drop a live socket's queue. */
	if (bpf_sock_hash_update(skops, &patu_socks, &st->own_key, BPF_NOEXIST)) {
		bpf_map_delete_elem(&patu_sock_recs, &st->own_key);
		count(CNT_INSERT_FAIL_MAP, 1);
		return;
	}
	st->in_map = 1;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	count(CNT_SOCK_INSERTED, 1);
}

static __always_inline void on_established(struct bpf_sock_ops *skops, int passive)
{
	struct bpf_sock *sk = skops->sk;
	struct sock_key key = {};
	struct tcp_sock *tp;
	struct sk_state *st;

	if (!sk || fill_key(skops, &key))
		return;
	count(CNT_SOCK_SEEN, 1);
	if (!eligible(&key))
		return;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	/* An MPTCP subflow is read and written by the MPTCP socket, which
	 * never looks at the subflow's redirect queue. */
	if (tp->is_mptcp) {
		count(CNT_SKIP_MPTCP, 1);
		return;
	}
	/* kTLS and other ULPs replace the socket's proto; sockmap refuses
	 * them, and their records would mislead the peer. */
	if (((struct inet_connection_sock *)tp)->icsk_ulp_ops) {
		count(CNT_SKIP_ULP, 1);
		return;
	}
	st = bpf_sk_storage_get(&patu_sk_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count(CNT_INSERT_FAIL_STATE, 1);
		return;
	}
	st->own_key = key;
	swap_key(&key, &st->peer_key);
	st->mode = PATH_TCP_WAIT;

	insert(skops, tp, st, passive);
}

static __always_inline void on_close(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sock_rec *rec;
	struct sk_state *st;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&patu_sk_state, sk, 0, 0);
	if (!st || !st->in_map)
		return;
	rec = bpf_map_lookup_elem(&patu_sock_recs, &st->own_key);
	if (rec && rec->cookie == bpf_get_socket_cookie(skops))
		bpf_map_delete_elem(&patu_sock_recs, &st->own_key);
	count(CNT_SOCK_CLOSED, 1);
}

SEC("sockops")
int patu_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_established(skops, 0);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_established(skops, 1);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			on_close(skops);
		break;
	}
	return 1;
}

/* ----------------------------------------------------------------- sk_msg */

static __always_inline int tcp_wait(struct sk_state *st, __u32 reason, __u32 size)
{
	st->mode = PATH_TCP_WAIT;
	fallback(reason, size);
	return SK_PASS;
}

static __always_inline int tcp_for_good(struct sk_state *st, __u32 reason, __u32 size)
{
	st->mode = PATH_TCP;
	st->reason = reason;
	fallback(reason, size);
	return SK_PASS;
}

static __always_inline int redirect(struct sk_msg_md *msg, struct sk_state *st, __u32 size)
{
	/* An untrusted typed view of the peer: its loads are JIT-ed as plain
	 * loads guarded by an exception table, with no helper call. A stale
	 * read only matters for going back to redirect, which checks the
	 * cookie; here the redirect itself fails if the peer left the map. */
	struct sock *psk = bpf_rdonly_cast((void *)st->peer_addr, bpf_core_type_id_kernel(struct sock));
	int rmem, rcvbuf;

	/* Since 6.13 redirected bytes are charged to the receiver's
	 * sk_rmem_alloc until read; before, they are counted here. */
	rmem = psk->sk_backlog.rmem_alloc.counter;
	rcvbuf = psk->sk_rcvbuf;
	if (!rmem_charged) {
		struct tcp_sock *ptp = bpf_rdonly_cast((void *)st->peer_addr, bpf_core_type_id_kernel(struct tcp_sock));
		struct sock_rec *rec = bpf_map_lookup_elem(&patu_sock_recs, &st->peer_key);
		__u64 read;

		if (!rec)
			return tcp_for_good(st, FB_PEER_GONE, size);
		/* What the receiver read of the redirected bytes. */
		read = rec->read_bytes - (__u32)(ptp->copied_seq - rec->base_copied);
		if (st->redirected > read)
			rmem += st->redirected - read;
	}
	if ((__u32)rmem > high_mark(rcvbuf)) {
		/* Safe at any moment: the receiver drains its redirect queue
		 * before its TCP queue. TCP flow control now blocks us. */
		count(CNT_BACKPRESSURE_TRIPS, 1);
		return tcp_wait(st, FB_BACKPRESSURE, size);
	}
	if (bpf_msg_redirect_hash(msg, &patu_socks, &st->peer_key, BPF_F_INGRESS) != SK_PASS)
		/* The peer left the map, which only its close does. */
		return tcp_for_good(st, FB_PEER_GONE, size);
	st->redirected += size;
	count(CNT_REDIRECT_MSGS, 1);
	count(CNT_REDIRECT_BYTES, size);
	return SK_PASS;
}

/*
 * The ordering rule. A direction is redirected only while the receiver's
 * application has read every byte this socket ever sent over TCP (its
 * copied_seq has reached our write_seq): then no TCP byte can be overtaken.
 * That holds at the first send of a fresh connection, and again once a
 * receiver has drained what went over TCP while it lagged; it never holds
 * after a late insert, TCP Fast Open or any TCP byte still unread.
 *
 * And the splice rule: splice(2) reads only the TCP receive queue, never
 * the redirect queue, so a receiver is redirected to only once its
 * application has been seen reading it with recvmsg(2)/read(2).
 */
static __always_inline int try_promote(struct sk_msg_md *msg, struct sk_state *st, __u32 size)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(msg->sk);
	struct sock_rec *rec;
	struct tcp_sock *ptp;
	struct sock *psk;
	int rmem, rcvbuf;
	__u32 copied;
	__u64 cookie;

	if (!tp)
		return tcp_for_good(st, FB_UNTRACKED, size);
	rec = bpf_map_lookup_elem(&patu_sock_recs, &st->peer_key);
	if (!rec || (rec->visible_after && bpf_ktime_get_ns() < rec->visible_after))
		return tcp_wait(st, FB_PEER_MISSING, size);
	if (!(rec->flags & SOCK_RECV_PROVEN))
		return tcp_wait(st, FB_NOT_PROVEN, size);

	psk = bpf_rdonly_cast((void *)rec->addr, bpf_core_type_id_kernel(struct sock));
	ptp = bpf_rdonly_cast((void *)rec->addr, bpf_core_type_id_kernel(struct tcp_sock));
	copied = ptp->copied_seq;
	rmem = psk->sk_backlog.rmem_alloc.counter;
	rcvbuf = psk->sk_rcvbuf;
	/* Read last, so that a peer freed and reused under us shows here. */
	asm volatile("" ::: "memory");
	cookie = psk->__sk_common.skc_cookie.counter;
	if (cookie != rec->cookie)
		return tcp_for_good(st, FB_PEER_GONE, size);
	if (copied != tp->write_seq)
		return tcp_wait(st, FB_ORDERING, size);
	if ((__u32)rmem > high_mark(rcvbuf) / 2)
		return tcp_wait(st, FB_BACKPRESSURE, size);

	st->peer_addr = rec->addr;
	st->mode = PATH_REDIRECT;
	count(CNT_PROMOTIONS, 1);
	return redirect(msg, st, size);
}

SEC("sk_msg")
int patu_sk_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	__u32 size = msg->size;
	struct sk_state *st;

	if (!sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&patu_sk_state, sk, 0, 0);
	if (!st) {
		fallback(FB_UNTRACKED, size);
		return SK_PASS;
	}
	if (st->mode == PATH_REDIRECT)
		return redirect(msg, st, size);
	if (st->mode == PATH_TCP_WAIT)
		return try_promote(msg, st, size);
	fallback(st->reason, size);
	return SK_PASS;
}

/* ------------------------------------------------------------ recv proof */

/* sock_recv_length fires in sock_recvmsg(), the path of recvmsg(2),
 * read(2) and io_uring receives, and never for splice(2). */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(patu_recv_proof, struct sock *sk, int ret, int flags)
{
	struct sock_rec *rec;
	struct sk_state *st;

	st = bpf_sk_storage_get(&patu_sk_state, sk, 0, 0);
	if (!st || !st->in_map || (st->proven && rmem_charged))
		return 0;
	rec = bpf_map_lookup_elem(&patu_sock_recs, &st->own_key);
	if (!rec)
		return 0;
	if (!rmem_charged && ret > 0)
		__sync_fetch_and_add(&rec->read_bytes, ret);
	if (st->proven)
		return 0;
	__sync_fetch_and_or(&rec->flags, SOCK_RECV_PROVEN);
	st->proven = 1;
	count(CNT_RECV_PROVEN, 1);
	return 0;
}

/* Referenced only so that their BTF reaches the Go bindings. */
const enum counter *unused_counter __attribute__((unused));
const enum fallback_reason *unused_reason __attribute__((unused));
const enum path_mode *unused_mode __attribute__((unused));
const enum endpoint_flags *unused_endpoint_flags __attribute__((unused));
const struct endpoint_key *unused_endpoint_key __attribute__((unused));
