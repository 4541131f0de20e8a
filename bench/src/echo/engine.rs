//! The echo server's frame engine: consumes masked client bytes as they arrive and produces
//! the unmasked echo, frame by frame, without ever buffering a data payload.
//!
//! Data frames are echoed with the same opcode and FIN bit as they stream in (so fragmented
//! messages come back as the same fragments), pings are answered with pongs, a close frame is
//! answered with a close frame. Every protocol violation ends in a close frame with a code
//! (1002, or 1009 past the frame-size limit); no input can make it panic or allocate more
//! than one control payload (125 bytes).

use super::fault::Fault;
use crate::ws::frame::{
    self, CLOSE_PROTOCOL, CLOSE_TOO_BIG, MAX_HEADER, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, Parsed,
};

/// What the connection does after a call to [`Engine::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Write the output, then close the connection.
    Close,
}

#[derive(Debug, Clone, Copy)]
enum Sink {
    /// Copy the payload to the output (flipping byte 0 when `corrupt`).
    Echo { corrupt: bool },
    /// Swallow the payload (fault injection).
    Drop,
    /// Collect into the control buffer; act on it when complete.
    Control(u8),
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Header,
    Payload { remaining: u64, offset: u64, mask: [u8; 4], sink: Sink },
    Closed,
}

/// Per-connection echo state; small enough to keep for every idle connection.
#[derive(Debug)]
pub struct Engine {
    stage: Stage,
    hdr: [u8; MAX_HEADER],
    hdr_len: u8,
    in_message: bool,
    data_frames: u32,
    /// Pings seen (only counted for the pong faults).
    pings: u32,
    fault: Fault,
    max_frame: u64,
    ctrl: Vec<u8>,
    /// A pong held back by `Fault::LatePongEvery`, sent before the next one.
    held_pong: Option<Vec<u8>>,
}

impl Engine {
    /// A fresh engine for a connection that just finished its handshake.
    pub fn new(fault: Fault, max_frame: u64) -> Self {
        Self {
            stage: Stage::Header,
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            in_message: false,
            data_frames: 0,
            pings: 0,
            fault,
            max_frame,
            ctrl: Vec::new(),
            held_pong: None,
        }
    }

    /// Consumes `input` (unmasking it in place) and appends the reply bytes to `out`.
    pub fn feed(&mut self, input: &mut [u8], out: &mut Vec<u8>) -> Flow {
        let mut pos = 0;
        while pos < input.len() {
            match self.stage {
                Stage::Closed => return Flow::Close,
                Stage::Header => match self.take_header(&input[pos..]) {
                    None => return Flow::Continue,
                    Some((header, used)) => {
                        pos += used;
                        if let Err(code) = self.start_frame(header, out) {
                            return self.fail(code, out);
                        }
                    }
                },
                Stage::Payload { remaining, offset, mask, sink } => {
                    let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len() - pos);
                    let chunk = &mut input[pos..pos + n];
                    frame::apply_mask(chunk, mask, offset);
                    match sink {
                        Sink::Echo { corrupt } => {
                            let at = out.len();
                            out.extend_from_slice(chunk);
                            if corrupt && offset == 0 && n > 0 {
                                out[at] ^= 0xFF;
                            }
                        }
                        Sink::Drop => {}
                        Sink::Control(_) => self.ctrl.extend_from_slice(chunk),
                    }
                    pos += n;
                    let remaining = remaining - n as u64;
                    self.stage = Stage::Payload { remaining, offset: offset + n as u64, mask, sink };
                    if remaining == 0 && self.end_frame(out) == Flow::Close {
                        return Flow::Close;
                    }
                }
            }
        }
        // A frame with an empty payload ends as soon as its header is read.
        if let Stage::Payload { remaining: 0, .. } = self.stage {
            return self.end_frame(out);
        }
        if let Stage::Closed = self.stage { Flow::Close } else { Flow::Continue }
    }

    /// Accumulates header bytes; returns the header and how many bytes of `input` it used.
    fn take_header(&mut self, input: &[u8]) -> Option<(frame::Header, usize)> {
        if self.hdr_len == 0 {
            match frame::parse_header(input) {
                Parsed::Header(h, n) => return Some((h, n)),
                Parsed::Need(_) => {
                    self.hdr[..input.len()].copy_from_slice(input);
                    self.hdr_len = input.len() as u8;
                    return None;
                }
            }
        }
        let old = usize::from(self.hdr_len);
        let add = (MAX_HEADER - old).min(input.len());
        self.hdr[old..old + add].copy_from_slice(&input[..add]);
        match frame::parse_header(&self.hdr[..old + add]) {
            Parsed::Header(h, n) => {
                self.hdr_len = 0;
                Some((h, n - old))
            }
            Parsed::Need(_) => {
                self.hdr_len = (old + add) as u8;
                None
            }
        }
    }

    fn start_frame(&mut self, h: frame::Header, out: &mut Vec<u8>) -> Result<(), u16> {
        let Some(mask) = h.mask else {
            return Err(CLOSE_PROTOCOL);
        };
        if h.rsv != 0 {
            return Err(CLOSE_PROTOCOL);
        }
        if h.len > self.max_frame {
            return Err(CLOSE_TOO_BIG);
        }
        let sink = match h.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !h.fin || h.len > 125 {
                    return Err(CLOSE_PROTOCOL);
                }
                self.ctrl.clear();
                Sink::Control(h.opcode)
            }
            OP_CONT | OP_TEXT | OP_BINARY => {
                if (h.opcode == OP_CONT) != self.in_message {
                    return Err(CLOSE_PROTOCOL);
                }
                self.in_message = !h.fin;
                self.data_frames = self.data_frames.wrapping_add(1);
                match self.fault.applies(self.data_frames) {
                    Some(Fault::DropEvery(_)) => Sink::Drop,
                    fault => {
                        frame::write_header(out, h.fin, h.opcode, None, h.len);
                        Sink::Echo { corrupt: matches!(fault, Some(Fault::CorruptEvery(_))) }
                    }
                }
            }
            _ => return Err(CLOSE_PROTOCOL),
        };
        self.stage = Stage::Payload { remaining: h.len, offset: 0, mask, sink };
        Ok(())
    }

    fn end_frame(&mut self, out: &mut Vec<u8>) -> Flow {
        let Stage::Payload { sink, .. } = self.stage else {
            return Flow::Continue;
        };
        self.stage = Stage::Header;
        let Sink::Control(op) = sink else {
            return Flow::Continue;
        };
        let payload = std::mem::take(&mut self.ctrl);
        match op {
            OP_PING if matches!(self.fault, Fault::LatePongEvery(_) | Fault::DupPongEvery(_)) => {
                self.pings = self.pings.wrapping_add(1);
                if let Some(held) = self.held_pong.take() {
                    frame::write_frame(out, true, OP_PONG, None, &held);
                }
                match self.fault.applies(self.pings) {
                    Some(Fault::LatePongEvery(_)) => self.held_pong = Some(payload),
                    Some(_) => {
                        frame::write_frame(out, true, OP_PONG, None, &payload);
                        frame::write_frame(out, true, OP_PONG, None, &payload);
                    }
                    None => frame::write_frame(out, true, OP_PONG, None, &payload),
                }
            }
            OP_PING => frame::write_frame(out, true, OP_PONG, None, &payload),
            OP_CLOSE if payload.len() == 1 => return self.fail(CLOSE_PROTOCOL, out),
            OP_CLOSE => {
                frame::write_frame(out, true, OP_CLOSE, None, &payload);
                self.stage = Stage::Closed;
                return Flow::Close;
            }
            _ => {}
        }
        Flow::Continue
    }

    fn fail(&mut self, code: u16, out: &mut Vec<u8>) -> Flow {
        frame::write_close(out, code, None);
        self.stage = Stage::Closed;
        self.ctrl = Vec::new();
        Flow::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{CLOSE_NORMAL, write_close, write_frame};

    const M: Option<[u8; 4]> = Some([9, 8, 7, 6]);

    fn run(input: &[u8], step: usize, fault: Fault) -> (Vec<u8>, Flow) {
        let mut e = Engine::new(fault, 1 << 20);
        let mut out = Vec::new();
        let mut flow = Flow::Continue;
        for chunk in input.chunks(step.max(1)) {
            flow = e.feed(&mut chunk.to_vec(), &mut out);
            if flow == Flow::Close {
                break;
            }
        }
        (out, flow)
    }

    #[test]
    fn echoes_data_ping_and_close_in_any_split() {
        let mut input = Vec::new();
        write_frame(&mut input, true, OP_TEXT, M, b"hello");
        write_frame(&mut input, false, OP_BINARY, M, &[1; 300]);
        write_frame(&mut input, true, OP_PING, M, b"p");
        write_frame(&mut input, true, OP_CONT, M, &vec![2; 70_000]);
        write_frame(&mut input, true, OP_BINARY, M, b"");
        write_close(&mut input, CLOSE_NORMAL, M);
        let mut want = Vec::new();
        write_frame(&mut want, true, OP_TEXT, None, b"hello");
        write_frame(&mut want, false, OP_BINARY, None, &[1; 300]);
        write_frame(&mut want, true, OP_PONG, None, b"p");
        write_frame(&mut want, true, OP_CONT, None, &vec![2; 70_000]);
        write_frame(&mut want, true, OP_BINARY, None, b"");
        write_close(&mut want, CLOSE_NORMAL, None);
        for step in [1, 2, 3, 7, 13, 1000, input.len()] {
            let (out, flow) = run(&input, step, Fault::None);
            assert_eq!(flow, Flow::Close, "step {step}");
            assert!(out == want, "step {step}");
        }
    }

    #[test]
    fn protocol_errors_close_with_a_code() {
        let close_with = |code: u16| {
            let mut v = Vec::new();
            write_close(&mut v, code, None);
            v
        };
        let mut unmasked = Vec::new();
        write_frame(&mut unmasked, true, OP_TEXT, None, b"x");
        assert_eq!(run(&unmasked, 100, Fault::None), (close_with(CLOSE_PROTOCOL), Flow::Close));
        let mut cont = Vec::new();
        write_frame(&mut cont, true, OP_CONT, M, b"x");
        assert_eq!(run(&cont, 100, Fault::None).0, close_with(CLOSE_PROTOCOL));
        let mut big = Vec::new();
        frame::write_header(&mut big, true, OP_BINARY, M, u64::MAX);
        assert_eq!(run(&big, 100, Fault::None).0, close_with(CLOSE_TOO_BIG));
        let mut long_ping = Vec::new();
        write_frame(&mut long_ping, true, OP_PING, M, &[0; 126]);
        assert_eq!(run(&long_ping, 100, Fault::None).0, close_with(CLOSE_PROTOCOL));
    }

    #[test]
    fn faults_hit_exactly_every_nth_frame() {
        let mut input = Vec::new();
        for _ in 0..4 {
            write_frame(&mut input, true, OP_BINARY, M, b"abc");
        }
        let (out, _) = run(&input, 5, Fault::DropEvery(2));
        assert_eq!(out.len(), 2 * 5);
        let (out, _) = run(&input, 5, Fault::CorruptEvery(2));
        assert_eq!(&out[2..5], b"abc");
        assert_eq!(&out[7..10], &[b'a' ^ 0xFF, b'b', b'c']);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = run(&bytes, (x % 9) as usize + 1, Fault::None);
        }
    }
}
