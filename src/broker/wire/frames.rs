//! Splitting the bytes the broker sends into frames, and passing each on checked: method
//! and content header frames whole (rewritten when [`super::properties`] says so), body
//! and heartbeat frames as they arrive. Pure, apart from filing reports.

use std::collections::HashMap;

use super::properties::{MethodKind, check_content_header, check_method};
use super::reports::WireReports;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
/// Frame type, channel, payload size.
const FRAME_HEAD: usize = 1 + 2 + 4;
const FRAME_END: u8 = 0xCE;
/// Method and header frames larger than this are passed on unchecked: the client refuses
/// any frame over `frame_max` (128 KiB by default) anyway.
const MAX_CHECKED_FRAME: usize = 1 << 20;

/// The state of one connection's inbound byte stream.
#[derive(Debug)]
pub struct FrameFilter {
    state: State,
    reports: WireReports,
    /// Per channel: the delivery tag of the message whose frames come next, if any.
    next_message: HashMap<u16, Option<u64>>,
    /// A method or header frame split across reads, gathered (reused).
    gathered: Vec<u8>,
}

#[derive(Debug)]
enum State {
    /// Reading a frame's head.
    Head { head: [u8; FRAME_HEAD], have: usize },
    /// Gathering a method or content header frame (payload and end octet) in
    /// `gathered`.
    Whole { head: [u8; FRAME_HEAD], need: usize },
    /// Passing on this many more bytes of the current frame.
    Pass { left: usize },
    /// Not AMQP frames (the broker answered our protocol header with its own): passed on
    /// as they are; the client will say what is wrong.
    Raw,
}

impl FrameFilter {
    pub fn new(reports: WireReports) -> Self {
        FrameFilter {
            state: State::Head {
                head: [0; FRAME_HEAD],
                have: 0,
            },
            reports,
            next_message: HashMap::new(),
            gathered: Vec::new(),
        }
    }

    /// Whether the next bytes pass on unchanged, and how many of them.
    pub fn passing(&self) -> usize {
        match self.state {
            State::Pass { left } => left,
            _ => 0,
        }
    }

    /// Records that `n` bytes were passed on by the caller (at most [`Self::passing`]).
    pub fn passed(&mut self, n: usize) {
        if let State::Pass { left } = &mut self.state {
            *left -= n.min(*left);
            if *left == 0 {
                self.state = State::Head {
                    head: [0; FRAME_HEAD],
                    have: 0,
                };
            }
        }
    }

    /// Takes bytes as they came from the broker and appends what the client should see.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Raw => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Pass { left } => {
                    let n = (*left).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.passed(n);
                }
                State::Head { head, have } => {
                    if *have == 0 && input[0] == b'A' {
                        self.state = State::Raw;
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
                        let checked = matches!(head[0], FRAME_METHOD | FRAME_HEADER)
                            && size <= MAX_CHECKED_FRAME;
                        if !checked {
                            out.extend_from_slice(&head);
                            self.state = State::Pass { left: size + 1 };
                        } else if input.len() > size {
                            // The whole frame is here: checked in place.
                            self.state = State::Head {
                                head: [0; FRAME_HEAD],
                                have: 0,
                            };
                            let (frame, rest) = input.split_at(size + 1);
                            self.finish(head, frame, out);
                            input = rest;
                        } else {
                            self.gathered.clear();
                            self.state = State::Whole {
                                head,
                                need: size + 1,
                            };
                        }
                    }
                }
                State::Whole { head, need } => {
                    let n = (*need - self.gathered.len()).min(input.len());
                    self.gathered.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.gathered.len() == *need {
                        let head = *head;
                        self.state = State::Head {
                            head: [0; FRAME_HEAD],
                            have: 0,
                        };
                        let frame = std::mem::take(&mut self.gathered);
                        self.finish(head, &frame, out);
                        self.gathered = frame;
                    }
                }
            }
        }
    }

    /// Passes on one whole method or content header frame (payload and end octet).
    fn finish(&mut self, head: [u8; FRAME_HEAD], frame: &[u8], out: &mut Vec<u8>) {
        let channel = u16::from_be_bytes([head[1], head[2]]);
        let (payload, end) = frame.split_at(frame.len() - 1);
        if end != [FRAME_END] {
            // Not a frame the client can parse; it will close the connection and say why.
            out.extend_from_slice(&head);
            out.extend_from_slice(frame);
            return;
        }
        let checked = if head[0] == FRAME_METHOD {
            let (kind, checked) = check_method(payload);
            match kind {
                MethodKind::Delivery(tag) => {
                    self.next_message.insert(channel, Some(tag));
                }
                MethodKind::Return => {
                    self.next_message.insert(channel, None);
                }
                MethodKind::ChannelReset => {
                    self.next_message.remove(&channel);
                    self.reports.forget_channel(channel);
                }
                MethodKind::Other => {}
            }
            checked
        } else {
            check_content_header(payload)
        };
        if !checked.report.is_empty()
            && let Some(Some(tag)) = self.next_message.get(&channel)
        {
            self.reports.file(channel, *tag, checked.report);
        }
        match checked.rewritten {
            Some(payload) => {
                let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                out.push(head[0]);
                out.extend_from_slice(&head[1..3]);
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&payload);
                out.push(FRAME_END);
            }
            None => {
                out.extend_from_slice(&head);
                out.extend_from_slice(frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out.push(FRAME_END);
        out
    }

    fn short(bytes: &[u8]) -> Vec<u8> {
        [vec![u8::try_from(bytes.len()).unwrap()], bytes.to_vec()].concat()
    }

    fn deliver(tag: u64) -> Vec<u8> {
        [
            vec![0, 60, 0, 60],
            short(b"ctag"),
            tag.to_be_bytes().to_vec(),
            vec![0],
            short(b"webhooks.raw"),
            short(b"gateway"),
        ]
        .concat()
    }

    /// A content header whose message_id is "id\xff".
    fn bad_header() -> Vec<u8> {
        let mut out = vec![0, 60, 0, 0];
        out.extend_from_slice(&3u64.to_be_bytes());
        out.extend_from_slice(&(1u16 << 7).to_be_bytes());
        out.extend(short(b"id\xff"));
        out
    }

    /// A delivery on channel 1 with a bad header, its body, a heartbeat.
    fn stream(tag: u64) -> Vec<u8> {
        [
            frame(FRAME_METHOD, 1, &deliver(tag)),
            frame(FRAME_HEADER, 1, &bad_header()),
            frame(3, 1, b"abc"),
            frame(8, 0, b""),
        ]
        .concat()
    }

    fn run(filter: &mut FrameFilter, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in input.chunks(chunk) {
            filter.feed(part, &mut out);
        }
        out
    }

    #[test]
    fn every_split_of_the_input_gives_the_same_output_and_one_report() {
        let input = stream(9);
        let whole = run(
            &mut FrameFilter::new(WireReports::default()),
            &input,
            input.len(),
        );
        // "id" and U+FFFD would not fit the 3 bytes sent: the header frame carries "id",
        // one byte shorter.
        assert_eq!(whole.len(), input.len() - 1);
        for chunk in 1..input.len() {
            let reports = WireReports::default();
            let out = run(&mut FrameFilter::new(reports.clone()), &input, chunk);
            assert_eq!(out, whole, "fed {chunk} bytes at a time");
            let report = reports.take(1, 9).expect("filed under channel 1, tag 9");
            assert_eq!(report.problems, ["message_id: not UTF-8"]);
            assert!(reports.take(1, 9).is_none(), "taken once");
        }
    }

    #[test]
    fn frames_that_need_no_change_pass_byte_for_byte() {
        let input = [
            frame(FRAME_METHOD, 1, &deliver(1)),
            frame(3, 1, &[0xff; 300]),
            frame(8, 0, b""),
        ]
        .concat();
        let reports = WireReports::default();
        assert_eq!(
            run(&mut FrameFilter::new(reports.clone()), &input, 7),
            input
        );
        assert!(reports.take(1, 1).is_none());
    }

    #[test]
    fn a_channel_opened_again_forgets_its_reports() {
        let reports = WireReports::default();
        let mut filter = FrameFilter::new(reports.clone());
        let input = [
            stream(5),
            frame(FRAME_METHOD, 1, &[0, 20, 0, 11, 0, 0, 0, 0]),
        ]
        .concat();
        run(&mut filter, &input, 64);
        assert!(reports.take(1, 5).is_none());
    }

    #[test]
    fn a_protocol_header_from_the_broker_passes_as_it_is() {
        let input = b"AMQP\x00\x00\x09\x01".to_vec();
        assert_eq!(
            run(&mut FrameFilter::new(WireReports::default()), &input, 3),
            input
        );
    }
}
