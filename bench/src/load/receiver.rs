//! The client's side of incoming frames: server frames (unmasked) are cut out of whatever the
//! socket delivered, fragmented messages are reassembled, and each message is handed to the
//! caller.
//!
//! A connection keeps bytes here only while a frame is incomplete; an idle connection holds
//! two empty vectors. Frames larger than the limit are an error, never an allocation.

use crate::ws::frame::{self, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, Parsed};

/// A message from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// A complete text or binary message.
    Data { opcode: u8, payload: &'a [u8] },
    /// A ping (the server wants a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame with its status code (1005 when none).
    Close(u16),
}

/// Why the server's byte stream cannot be a WebSocket stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Masked server frame, bad continuation, reserved bits, unknown opcode.
    Malformed,
    /// Frame or message past the size limit.
    TooBig,
}

/// Incomplete-frame and fragmented-message state of one connection.
#[derive(Debug, Default)]
pub struct Receiver {
    partial: Vec<u8>,
    message: Vec<u8>,
    message_op: Option<u8>,
}

/// Largest frame or reassembled message accepted.
pub const MAX_MESSAGE: u64 = 64 << 20;

impl Receiver {
    /// Starts with bytes that arrived together with the handshake response.
    pub fn with_early(early: &[u8]) -> Self {
        Self { partial: early.to_vec(), ..Self::default() }
    }

    /// Whether bytes of an incomplete frame are held.
    pub fn has_buffered(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Feeds newly read bytes; calls `on_msg` for each complete message.
    pub fn feed(&mut self, input: &[u8], on_msg: &mut impl FnMut(Msg<'_>)) -> Result<(), ProtocolError> {
        if self.partial.is_empty() {
            let used = self.parse(input, on_msg)?;
            self.partial.extend_from_slice(&input[used..]);
        } else {
            self.partial.extend_from_slice(input);
            let held = std::mem::take(&mut self.partial);
            let used = self.parse(&held, on_msg);
            self.partial = held;
            let used = used?;
            self.partial.drain(..used);
            if self.partial.is_empty() {
                self.partial = Vec::new();
            }
        }
        Ok(())
    }

    /// Parses complete frames from `buf`; returns how many bytes were used.
    fn parse(&mut self, buf: &[u8], on_msg: &mut impl FnMut(Msg<'_>)) -> Result<usize, ProtocolError> {
        let mut pos = 0;
        loop {
            let Parsed::Header(h, hlen) = frame::parse_header(&buf[pos..]) else {
                return Ok(pos);
            };
            if h.mask.is_some() || h.rsv != 0 {
                return Err(ProtocolError::Malformed);
            }
            if h.len > MAX_MESSAGE {
                return Err(ProtocolError::TooBig);
            }
            let len = h.len as usize;
            if buf.len() - pos - hlen < len {
                self.partial.reserve(hlen + len);
                return Ok(pos);
            }
            let payload = &buf[pos + hlen..pos + hlen + len];
            pos += hlen + len;
            match h.opcode {
                OP_PING => on_msg(Msg::Ping(payload)),
                OP_PONG => on_msg(Msg::Pong(payload)),
                OP_CLOSE => {
                    let code = payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    on_msg(Msg::Close(code));
                }
                op if op & 0x8 != 0 || op > 2 => return Err(ProtocolError::Malformed),
                OP_CONT => {
                    let Some(op) = self.message_op else {
                        return Err(ProtocolError::Malformed);
                    };
                    if (self.message.len() + len) as u64 > MAX_MESSAGE {
                        return Err(ProtocolError::TooBig);
                    }
                    self.message.extend_from_slice(payload);
                    if h.fin {
                        on_msg(Msg::Data { opcode: op, payload: &self.message });
                        self.message = Vec::new();
                        self.message_op = None;
                    }
                }
                op => {
                    if self.message_op.is_some() {
                        return Err(ProtocolError::Malformed);
                    }
                    if h.fin {
                        on_msg(Msg::Data { opcode: op, payload });
                    } else {
                        self.message_op = Some(op);
                        self.message.extend_from_slice(payload);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{OP_BINARY, OP_TEXT, write_close, write_frame};

    #[test]
    fn reassembles_across_any_split() {
        let mut wire = Vec::new();
        write_frame(&mut wire, true, OP_TEXT, None, b"one");
        write_frame(&mut wire, false, OP_BINARY, None, b"tw");
        write_frame(&mut wire, true, OP_PING, None, b"p");
        write_frame(&mut wire, true, OP_CONT, None, b"o");
        write_close(&mut wire, 1000, None);
        for step in 1..wire.len() {
            let mut rx = Receiver::default();
            let mut seen = Vec::new();
            for chunk in wire.chunks(step) {
                rx.feed(chunk, &mut |m| seen.push(format!("{m:?}"))).unwrap();
            }
            assert_eq!(
                seen,
                [
                    format!("{:?}", Msg::Data { opcode: OP_TEXT, payload: b"one" }),
                    format!("{:?}", Msg::Ping(b"p")),
                    format!("{:?}", Msg::Data { opcode: OP_BINARY, payload: b"two" }),
                    format!("{:?}", Msg::Close(1000)),
                ],
                "step {step}"
            );
            assert!(!rx.has_buffered());
        }
    }

    #[test]
    fn masked_server_frames_are_errors() {
        let mut wire = Vec::new();
        write_frame(&mut wire, true, OP_TEXT, Some([1, 2, 3, 4]), b"x");
        assert_eq!(Receiver::default().feed(&wire, &mut |_| {}), Err(ProtocolError::Malformed));
    }
}
