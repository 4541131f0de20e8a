// SPDX-License-Identifier: GPL-2.0
/*
 * Kernel fast path of wsgate: after the WebSocket handshake the client and
 * upstream sockets of a connection enter `sock_hash`, and every skb that
 * arrives on one of them is redirected to the egress of the other.
 *
 * Backpressure: the program tracks, per direction, how many redirected bytes
 * the receiving peer has not acknowledged yet (its psock backlog plus its send
 * queue). Past the budget it stops redirecting and passes skbs to the
 * arriving socket's own receive path instead; userspace then relays them with
 * ordinary TCP flow control, and the program resumes redirecting once
 * userspace has written every passed byte and the peer is under budget again.
 * Passed skbs are charged to the socket's receive buffer, so a stalled peer
 * closes the sender's TCP window like a userspace relay would.
 *
 * The program never drops payload: the kernel has already acknowledged the
 * bytes of an skb when the verdict runs, so every path that cannot redirect
 * passes the skb to userspace. Only empty skbs (a bare FIN) and skbs whose
 * every byte was handed on before (a retransmission, see skip_handed_on) are
 * dropped.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "splice.h"

/* Plain loads and stores the compiler may neither merge nor tear: the `conns`
 * array is shared with userspace through mmap. */
#define READ_ONCE(x) (*(const volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

/* Per-connection byte budget, set by the loader (EbpfLoader::set_global). */
const volatile __u64 budget = 1 << 20;

/* Sizes below are placeholders: the loader sets them from the configured
 * connection capacity. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2);
	__type(key, __u64);   /* socket cookie */
	__type(value, __u32); /* fd on update (aya insists on 4-byte values) */
} sock_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2);
	__type(key, __u64); /* socket cookie */
	__type(value, struct splice_link);
} links SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct splice_conn);
} conns SEC(".maps");

/* Bytes the peer has been given in this direction: acknowledged before the
 * splice, redirected since, and passed bytes userspace has written. */
static __always_inline __u64 sent_total(struct splice_dir *d)
{
	return READ_ONCE(d->acked_base) + d->redirected +
	       READ_ONCE(d->forwarded);
}

/* Bytes of the current direction redirected but not yet acknowledged by the
 * peer (from the peer's tcp_sock) into *held, and remembers the look in
 * d->bound_base; 0 if the peer cannot be seen. */
static __always_inline int peer_unacked(struct splice_link *link,
					struct splice_dir *d, __u64 *held)
{
	struct bpf_sock *peer;
	struct tcp_sock *tp;
	__u64 sent, acked = 0;
	int ok = 0;

	peer = bpf_map_lookup_elem(&sock_hash, &link->peer_cookie);
	if (!peer)
		return 0;
	tp = bpf_skc_to_tcp_sock(peer);
	if (tp) {
		acked = tp->bytes_acked;
		ok = 1;
	}
	bpf_sk_release(peer);
	/* `acked` runs one ahead of `sent` once the peer's FIN is acked. */
	sent = sent_total(d);
	*held = sent > acked ? sent - acked : 0;
	WRITE_ONCE(d->bound_base, *held - sent);
	return ok;
}

/* Largest head trim of one bpf_skb_adjust_room() call on an sk_skb (the
 * kernel refuses more), and how many calls one skb may take: 160 × 4095 bytes
 * is more than TCP puts in one skb, even with BIG TCP's 512 KiB. */
#define TRIM_STEP 0xfff
#define TRIM_STEPS 160

/* Cuts the first n bytes off the skb's payload; 0 on success. */
static __always_inline int trim_head(struct __sk_buff *skb, __u32 n)
{
	__u32 steps = n / TRIM_STEP, rest = n % TRIM_STEP;

	if (steps > TRIM_STEPS)
		return -1;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < TRIM_STEPS; i++) {
		if (i >= steps)
			break;
		if (bpf_skb_adjust_room(skb, -TRIM_STEP, 0, 0))
			return -1;
	}
	if (rest && bpf_skb_adjust_room(skb, -(__s32)rest, 0, 0))
		return -1;
	return 0;
}

/* The TCP sequence number of the skb's first payload byte (TCP_SKB_CB). */
static __always_inline int skb_seq(struct __sk_buff *skb, __u32 *seq)
{
	struct sk_buff *kskb = (struct sk_buff *)skb;
	struct tcp_skb_cb *cb = (struct tcp_skb_cb *)&kskb->cb[0];

	return bpf_probe_read_kernel(seq, sizeof(*seq), &cb->seq) == 0;
}

/* copied_seq of the socket the skb arrived on: before the program has seen
 * any of its skbs, the first byte nobody has taken yet. */
static __always_inline int own_copied_seq(__u64 cookie, __u32 *seq)
{
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	int ok = 0;

	sk = bpf_map_lookup_elem(&sock_hash, &cookie);
	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		*seq = tp->copied_seq;
		ok = 1;
	}
	bpf_sk_release(sk);
	return ok;
}

enum handed_on { FRESH, OLD, BROKEN };

/*
 * Retransmitted bytes. When a segment arrives that starts before rcv_nxt but
 * ends after it (a retransmission, possibly of several segments collapsed
 * into one, some of which had arrived), TCP queues the whole skb with its
 * original sequence number and leaves it to the reader to skip what it has
 * already taken: tcp_recvmsg() and tcp_read_sock() skip copied_seq - seq
 * bytes. tcp_read_skb(), which feeds this verdict, does not: it hands over
 * the whole skb, so without this check those bytes reach the peer twice.
 * Measured here: a whole 65483-byte segment (the loopback MSS) duplicated in
 * the slow-reader tests whenever a stalled reader's closed window made the
 * sender retransmit; it is no property of the pressure path, and on a real
 * network any lost ACK can cause it.
 *
 * So the program keeps the sequence number just past the last byte it has
 * handed on (redirected or passed) and cuts anything before it off the head
 * of the skb, or drops the skb if nothing new is left. An skb it cannot
 * trim is dropped and the pair marked broken (userspace resets it): better
 * a reset than a corrupted stream.
 */
static __always_inline enum handed_on
skip_handed_on(struct __sk_buff *skb, __u64 cookie, struct splice_dir *d)
{
	__u64 known = d->next_seq;
	__u32 seq, next, over, len = skb->len;

	if (!skb_seq(skb, &seq))
		return FRESH;
	if (known & SPLICE_SEQ_SET)
		next = (__u32)known;
	else if (!own_copied_seq(cookie, &next))
		next = seq;
	over = next - seq;
	if ((__s32)over > 0) {
		if (over >= len) {
			WRITE_ONCE(d->trimmed, d->trimmed + len);
			return OLD;
		}
		if (trim_head(skb, over)) {
			WRITE_ONCE(d->broken, 1);
			return BROKEN;
		}
		WRITE_ONCE(d->trimmed, d->trimmed + over);
		seq = next;
		len = skb->len;
	}
	WRITE_ONCE(d->next_seq, (__u64)(seq + len) | SPLICE_SEQ_SET);
	return FRESH;
}

static __always_inline int pass(struct splice_dir *d, __u64 len)
{
	if (d->passed == READ_ONCE(d->forwarded))
		__sync_fetch_and_add(&d->pass_runs, 1);
	WRITE_ONCE(d->passed, d->passed + len);
	return SK_PASS;
}

/*
 * WebSocket frame tracking (see struct splice_frames). The program reads only
 * frame headers (2 to 14 bytes each) and skips payloads by count, one step of
 * bpf_loop per header or payload, so the cost grows with the frames in an skb,
 * not its bytes. Past TRACK_STEPS steps in one skb it stops and marks the
 * direction unknown rather than guess; 2^17 steps follow an skb of 256 KiB of
 * empty frames, more than TCP queues in one skb here.
 */
#define TRACK_STEPS (1 << 17)
#define OPCODE_CLOSE 0x8

/* One run of the tracker over one skb, on the verdict's stack. */
struct frame_run {
	struct __sk_buff *skb;
	__u64 left;
	__u32 pos;
	__u32 len;
	__u32 have;
	__u32 flags;
	__u8 head[16];
};

/* Length of a frame header whose second byte is b1: 2, plus 2 or 8 for an
 * extended length, plus 4 for a mask. */
static __always_inline __u32 header_len(__u8 b1)
{
	__u32 n = 2;

	if ((b1 & 0x7f) == 126)
		n += 2;
	else if ((b1 & 0x7f) == 127)
		n += 8;
	if (b1 & 0x80)
		n += 4;
	return n;
}

/* A whole header h is in: its payload starts. */
static __always_inline void start_payload(struct frame_run *t, const __u8 *h)
{
	__u8 n = h[1] & 0x7f;

	if (n == 126) {
		t->left = ((__u64)h[2] << 8) | h[3];
	} else if (n == 127) {
		__u64 v = 0;

		for (int i = 2; i < 10; i++)
			v = (v << 8) | h[i];
		t->left = v;
	} else {
		t->left = n;
	}
	if ((h[0] & 0x0f) == OPCODE_CLOSE)
		t->flags |= SPLICE_FRAMES_IN_CLOSE;
	else
		t->flags &= ~SPLICE_FRAMES_IN_CLOSE;
	t->have = 0;
	if (t->left == 0 && (t->flags & SPLICE_FRAMES_IN_CLOSE))
		t->flags |= SPLICE_FRAMES_CLOSE_SEEN;
}

/* One step: skip payload, read a whole header at once, or (near the end of
 * the skb, or for a header split across skbs) one header byte. */
static long track_step(__u32 i, void *ctx)
{
	struct frame_run *t = ctx;
	__u32 pos = t->pos, len = t->len, have = t->have;
	__u8 h[14];
	__u8 b;

	if (pos >= len)
		return 1;
	if (t->left > 0) {
		__u64 rest = len - pos;
		__u64 skip = t->left < rest ? t->left : rest;

		t->left -= skip;
		t->pos = pos + (__u32)skip;
		if (t->left == 0 && (t->flags & SPLICE_FRAMES_IN_CLOSE))
			t->flags |= SPLICE_FRAMES_CLOSE_SEEN;
		return 0;
	}
	if (have == 0 && len - pos >= sizeof(h)) {
		if (bpf_skb_load_bytes(t->skb, pos, h, sizeof(h)))
			goto unknown;
		t->pos = pos + header_len(h[1]);
		start_payload(t, h);
		return 0;
	}
	if (have >= 14 || bpf_skb_load_bytes(t->skb, pos, &b, 1))
		goto unknown;
	t->head[have & 15] = b;
	have++;
	t->have = have;
	t->pos = pos + 1;
	if (have >= 2 && have == header_len(t->head[1]))
		start_payload(t, t->head);
	return 0;
unknown:
	t->flags |= SPLICE_FRAMES_UNKNOWN;
	return 1;
}

/* Runs the tracker of direction f over the skb's len bytes. */
static __always_inline void track_frames(struct __sk_buff *skb, __u32 len,
					 struct splice_frames *f)
{
	struct frame_run t = {};

	if (f->flags & SPLICE_FRAMES_UNKNOWN)
		return;
	t.skb = skb;
	t.len = len;
	t.left = f->left;
	t.have = f->have;
	t.flags = f->flags;
	__builtin_memcpy(t.head, f->head, sizeof(f->head));
	bpf_loop(TRACK_STEPS, track_step, &t, 0);
	if (t.pos < t.len)
		t.flags |= SPLICE_FRAMES_UNKNOWN;
	WRITE_ONCE(f->left, t.left);
	__builtin_memcpy(f->head, t.head, sizeof(f->head));
	WRITE_ONCE(f->have, (__u8)t.have);
	WRITE_ONCE(f->flags, (__u8)t.flags);
}

/* Redirects the skb of direction d to the peer, or passes it to userspace
 * (over budget, draining, or while passed bytes wait to be forwarded). */
static __always_inline int route(struct __sk_buff *skb,
				 struct splice_link *link, struct splice_dir *d,
				 __u64 draining)
{
	__u64 len = skb->len;
	__u64 held = 0;
	int looked = 0;

	/* The drain is taking the pair back: userspace relays every byte
	 * from here on, up to the end of the frame in progress. */
	if (draining)
		return pass(d, len);

	/* Once anything was passed, keep passing until userspace has written
	 * it to the peer: redirecting now would overtake those bytes. */
	if (d->passed != READ_ONCE(d->forwarded))
		return pass(d, len);

	/* Acks only grow, so the unacked bytes are at most what they were at
	 * the last look at the peer plus everything sent since. While that
	 * bound leaves room, the peer's socket is not touched at all: small
	 * messages look at it about once per budget's worth of bytes. */
	held = sent_total(d) + d->bound_base;
	if (held >= budget || len > budget - held) {
		if (!peer_unacked(link, d, &held))
			return pass(d, len);
		looked = 1;
		/* Admit one skb into an empty pipe even if it is larger
		 * than the budget, so a direction can always progress. */
		if (held > 0 && held + len > budget)
			return pass(d, len);
	}

	/* On failure the helper sets no redirect: pass rather than drop. */
	if (bpf_sk_redirect_hash(skb, &sock_hash, &link->peer_cookie, 0) !=
	    SK_PASS)
		return pass(d, len);
	WRITE_ONCE(d->redirected, d->redirected + len);
	if (looked && held + len > d->held_max)
		WRITE_ONCE(d->held_max, held + len);
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int splice_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct splice_link *link;
	struct splice_conn *conn;
	struct splice_frames *f;
	struct splice_dir *d;
	__u64 draining;
	__u32 slot, dir;
	int verdict;

	/* An skb without payload only carried a FIN, which TCP has already
	 * processed (the socket is in CLOSE_WAIT and reads return 0). It must
	 * not reach a psock queue: behind queued bytes, a zero-length skb makes
	 * the psock backlog report EPIPE and stop, stranding every later byte.
	 * Dropping it loses nothing. */
	if (skb->len == 0)
		return SK_DROP;
	link = bpf_map_lookup_elem(&links, &cookie);
	if (!link)
		return SK_PASS;
	slot = link->slot;
	conn = bpf_map_lookup_elem(&conns, &slot);
	if (!conn)
		return SK_PASS;
	dir = link->dir & 1;
	d = &conn->dir[dir];
	f = &conn->frames[dir];
	WRITE_ONCE(conn->last_active_ns, bpf_ktime_get_coarse_ns());
	if (READ_ONCE(d->broken))
		return SK_DROP;
	if (skip_handed_on(skb, cookie, d) != FRESH)
		return SK_DROP;

	/* Frames and counters change together inside one odd `seq` (verdicts
	 * of one socket never run at once). The atomic add orders the read of
	 * `draining` after it: a userspace that sets `draining` and then reads
	 * an even `seq` knows every later verdict sees the flag. Once draining,
	 * the frames stay where they were: userspace follows them from there.
	 */
	__sync_fetch_and_add(&f->seq, 1);
	draining = READ_ONCE(conn->draining);
	if (!draining)
		track_frames(skb, skb->len, f);
	verdict = route(skb, link, d, draining);
	__sync_fetch_and_add(&f->seq, 1);
	return verdict;
}

char _license[] SEC("license") = "GPL";
