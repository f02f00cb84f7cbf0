//! Splitting what the client writes into frames, to swap the content header of each
//! publish marked for it ([`Verbatim`]) for the one registered. Pure, apart from taking
//! the substitute.

use super::frames::{FRAME_END, FRAME_HEAD, FRAME_HEADER, MAX_CHECKED_FRAME};
use super::properties::{CONTENT_HEADER_PREFIX, short_property};
use super::verbatim::Verbatim;

/// Flag order index of `cluster_id`, where a publish carries its marker.
const CLUSTER_ID: usize = 13;

/// The AMQP 0-9-1 protocol header the client writes first.
const PROTOCOL_HEADER: usize = 8;

/// The state of one connection's outbound byte stream.
#[derive(Debug)]
pub struct Outbound {
    verbatim: Verbatim,
    state: State,
    /// A content header frame split across writes, gathered (reused).
    gathered: Vec<u8>,
}

#[derive(Debug)]
enum State {
    /// Reading a frame's head.
    Head { head: [u8; FRAME_HEAD], have: usize },
    /// Gathering a content header frame (payload and end octet) in `gathered`.
    Whole { head: [u8; FRAME_HEAD], need: usize },
    /// Passing on this many more bytes as they are.
    Pass { left: usize },
}

const HEAD: State = State::Head {
    head: [0; FRAME_HEAD],
    have: 0,
};

impl Outbound {
    pub fn new(verbatim: Verbatim) -> Self {
        Outbound {
            verbatim,
            state: HEAD,
            gathered: Vec::new(),
        }
    }

    /// Takes bytes as the client wrote them and appends what goes to the broker.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Pass { left } => {
                    let n = (*left).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    *left -= n;
                    input = &input[n..];
                    if *left == 0 {
                        self.state = HEAD;
                    }
                }
                State::Head { head, have } => {
                    if *have == 0 && input[0] == b'A' {
                        // "AMQP" and the version: no frame type is 'A'.
                        self.state = State::Pass {
                            left: PROTOCOL_HEADER,
                        };
                        continue;
                    }
                    let n = (FRAME_HEAD - *have).min(input.len());
                    head[*have..*have + n].copy_from_slice(&input[..n]);
                    *have += n;
                    input = &input[n..];
                    if *have == FRAME_HEAD {
                        let head = *head;
                        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
                        let size = size as usize;
                        if head[0] == FRAME_HEADER && size <= MAX_CHECKED_FRAME {
                            self.gathered.clear();
                            self.state = State::Whole {
                                head,
                                need: size + 1,
                            };
                        } else {
                            out.extend_from_slice(&head);
                            self.state = State::Pass { left: size + 1 };
                        }
                    }
                }
                State::Whole { head, need } => {
                    let n = (*need - self.gathered.len()).min(input.len());
                    self.gathered.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.gathered.len() == *need {
                        let head = *head;
                        self.state = HEAD;
                        self.content_header(head, out);
                    }
                }
            }
        }
    }

    /// Passes on the gathered content header frame, or its substitute.
    fn content_header(&mut self, head: [u8; FRAME_HEAD], out: &mut Vec<u8>) {
        let frame = &self.gathered;
        let (payload, end) = frame.split_at(frame.len() - 1);
        let substitute = (end == [FRAME_END] && self.verbatim.is_waiting())
            .then(|| short_property(payload, CLUSTER_ID))
            .flatten()
            .and_then(|marker| self.verbatim.take(marker))
            .filter(|s| s.len() >= CONTENT_HEADER_PREFIX);
        let Some(mut substitute) = substitute else {
            out.extend_from_slice(&head);
            out.extend_from_slice(frame);
            return;
        };
        // The class, weight and body size the client wrote (the body is the same).
        substitute[..CONTENT_HEADER_PREFIX].copy_from_slice(&payload[..CONTENT_HEADER_PREFIX]);
        let size = u32::try_from(substitute.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&head[..3]);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&substitute);
        out.push(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::protocol::basic::gen_properties;

    use super::*;

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out.push(FRAME_END);
        out
    }

    /// A content header as the client writes it: body size 3, these properties.
    fn client_header(properties: &BasicProperties) -> Vec<u8> {
        let mut out = vec![0, 60, 0, 0];
        out.extend_from_slice(&3u64.to_be_bytes());
        out.extend(cookie_factory::gen_simple(gen_properties(properties), Vec::new()).unwrap());
        out
    }

    /// A publish: method, content header, body.
    fn publish(properties: &BasicProperties) -> Vec<u8> {
        [
            frame(1, 1, &[0, 60, 0, 40, 0, 0, 0, 1, b'q', 0]),
            frame(FRAME_HEADER, 1, &client_header(properties)),
            frame(3, 1, b"abc"),
        ]
        .concat()
    }

    fn run(outbound: &mut Outbound, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in input.chunks(chunk) {
            outbound.feed(part, &mut out);
        }
        out
    }

    #[test]
    fn a_marked_content_header_is_swapped_and_everything_else_passes() {
        // What the walk registers: a content header as the broker sent it (body size 0
        // there: the client's is kept).
        let mut sent = vec![0, 60, 0, 0];
        sent.extend_from_slice(&0u64.to_be_bytes());
        sent.extend_from_slice(&(1u16 << 7).to_be_bytes());
        sent.extend_from_slice(b"\x05id\xff\xfe!");
        let mut want_header = sent.clone();
        want_header[4..12].copy_from_slice(&3u64.to_be_bytes());
        let plain = BasicProperties::default().with_message_id("plain".into());
        for chunk in [1, 2, 7, 13, 1000] {
            let verbatim = Verbatim::default();
            let marker = verbatim.register(sent.clone());
            let marked = BasicProperties::default()
                .with_message_id("id\u{FFFD}".into())
                .with_cluster_id(marker.as_str().into());
            let input = [
                b"AMQP\x00\x00\x09\x01".to_vec(),
                publish(&plain),
                frame(8, 0, b""),
                publish(&marked),
                publish(&plain),
            ]
            .concat();
            let want = [
                b"AMQP\x00\x00\x09\x01".to_vec(),
                publish(&plain),
                frame(8, 0, b""),
                frame(1, 1, &[0, 60, 0, 40, 0, 0, 0, 1, b'q', 0]),
                frame(FRAME_HEADER, 1, &want_header),
                frame(3, 1, b"abc"),
                publish(&plain),
            ]
            .concat();
            let mut outbound = Outbound::new(verbatim.clone());
            assert_eq!(run(&mut outbound, &input, chunk), want, "{chunk} at a time");
            assert!(!verbatim.is_waiting(), "taken");
            // The same marker again (never registered twice) passes as it is.
            let again = publish(&marked);
            assert_eq!(run(&mut outbound, &again, chunk), again);
        }
    }
}
