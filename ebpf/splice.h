/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Types shared by splice.bpf.c and the gateway (gateway/src/splice/shared.rs
 * mirrors them as #[repr(C)] with size assertions). Change both together.
 */
#ifndef WSGATE_SPLICE_H
#define WSGATE_SPLICE_H

/* Direction index inside struct splice_conn: bytes arriving on the client
 * socket go to the upstream (0), bytes arriving on the upstream go to the
 * client (1). */
#define SPLICE_DIR_TO_UPSTREAM 0
#define SPLICE_DIR_TO_CLIENT 1

/* Value of the `links` map, keyed by the cookie of the socket the bytes
 * arrive on. Written by userspace before either socket enters the sockhash. */
struct splice_link {
	__u64 peer_cookie; /* where this socket's bytes go */
	__u32 slot;	   /* index into the `conns` array */
	__u32 dir;	   /* SPLICE_DIR_* of bytes arriving on this socket */
};

/* One direction of a spliced pair. The first eight fields are written only by
 * the program (userspace zeroes them when a slot is reused), the last two
 * only by userspace (in place, through mmap). */
struct splice_dir {
	__u64 redirected; /* bytes the program sent to the peer's egress */
	__u64 passed;	  /* bytes the program left for userspace to relay */
	__u64 pass_runs;  /* times the direction switched to userspace */
	__u64 held_max;	  /* most bytes unacked at a look at the peer,
			     plus the skb then redirected */
	__u64 bound_base; /* unacked minus sent at the last look at the peer
			     (mod 2^64): sent + bound_base bounds unacked */
	__u64 next_seq;	  /* TCP sequence number just past the last byte
			     handed on, | SPLICE_SEQ_SET once known */
	__u64 trimmed;	  /* retransmitted bytes cut off skbs because they
			     had been handed on already */
	__u64 broken;	  /* non-zero: an overlap could not be trimmed; the
			     skb was dropped and the pair must be reset */
	__u64 forwarded;  /* passed bytes userspace has written to the peer */
	__u64 acked_base; /* peer's bytes_acked once all pre-splice data is
			     acked */
};

/* Marks splice_dir.next_seq as known (sequence numbers are 32 bits). */
#define SPLICE_SEQ_SET (1ULL << 32)

/*
 * WebSocket frame state of one direction (RFC 6455 section 5.2), updated by
 * the program for every skb before it is redirected or passed, so that
 * userspace knows where the current frame ends when it takes a draining pair
 * back. Userspace seeds it before the pair is published (from the frames it
 * relayed itself) and reads it under `seq`: the program makes `seq` odd while
 * it updates this struct and the direction's redirected/passed counters, so
 * an even `seq` read before and after the fields makes a consistent picture of
 * the stream at byte redirected + passed.
 */
struct splice_frames {
	__u64 left;    /* payload bytes left in the current frame */
	__u64 seq;     /* odd while the program updates the state */
	__u8 head[14]; /* the frame header read so far */
	__u8 have;  /* bytes of head held; 0 between frames and in a payload */
	__u8 flags; /* SPLICE_FRAMES_* */
};

/* splice_frames.flags: where frames end is not known (bytes went by untracked,
 * or an skb held more frames than the program follows in one run). */
#define SPLICE_FRAMES_UNKNOWN 1
/* The current (or last) frame is a Close. */
#define SPLICE_FRAMES_IN_CLOSE 2
/* A whole Close frame has gone by. */
#define SPLICE_FRAMES_CLOSE_SEEN 4

/* Per-pair state: one element of the mmap-able `conns` array. */
struct splice_conn {
	struct splice_dir dir[2];
	__u64 last_active_ns; /* CLOCK_MONOTONIC_COARSE of the last skb */
	__u64 generation; /* bumped by userspace each time the slot is reused */
	struct splice_frames frames[2]; /* per direction, like dir */
	__u64 draining; /* written by userspace: non-zero passes every skb of
			   both directions to userspace (the drain's takeover)
			 */
};

#endif /* WSGATE_SPLICE_H */
