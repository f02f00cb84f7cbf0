//! Splitting the bytes the broker sends into frames, and passing each on checked: method
//! and content header frames whole (rewritten when [`super::properties`] says so), body
//! and heartbeat frames as they arrive. Returned messages are filed in [`Returns`] as
//! their frames go by. Pure, apart from filing reports and returns.

use std::collections::HashMap;

use super::properties::{
    MethodKind, check_content_header, check_method, content_summary, returned_route, with_body_size,
};
use super::reports::WireReports;
use super::returns::{Digesting, Returned, Returns};
use super::verbatim::Verbatim;

const FRAME_METHOD: u8 = 1;
pub(super) const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
/// Frame type, channel, payload size.
pub(super) const FRAME_HEAD: usize = 1 + 2 + 4;
pub(super) const FRAME_END: u8 = 0xCE;
/// Method and header frames larger than this are passed on unchecked: the client refuses
/// any frame over `frame_max` (128 KiB by default) anyway.
pub(super) const MAX_CHECKED_FRAME: usize = 1 << 20;

/// What a connection's frame check knows and where it files what it finds: shared by
/// the connection's stream and whoever reads the findings.
#[derive(Debug, Clone, Default)]
pub struct FrameCheck {
    /// What had to change in a delivery's frames, by channel and delivery tag.
    pub reports: WireReports,
    /// Our own publishes the broker returned, by channel.
    pub returns: Returns,
    /// Deliveries with a larger body are handed to the client with an empty one, and the
    /// body is dropped as it goes by: the worker never holds it (see
    /// [`super::WireReport::body_omitted`]).
    pub max_body_bytes: Option<u64>,
    /// On a connection that puts messages back byte for byte (a queue walk): rewritten
    /// content headers are kept as sent in their reports, and marked ones the client
    /// writes are swapped for their substitutes. `None` (the worker's) costs nothing.
    pub verbatim: Option<Verbatim>,
}

/// The state of one connection's inbound byte stream.
#[derive(Debug)]
pub struct FrameFilter {
    state: State,
    check: FrameCheck,
    /// Per channel: the message whose frames come next, if any.
    next_message: HashMap<u16, Incoming>,
    /// Per channel: the body of a returned message being received.
    returned_bodies: HashMap<u16, ReturnedBody>,
    /// Per channel: bytes left of an oversized body being dropped.
    dropping: HashMap<u16, u64>,
    /// A method or header frame split across reads, gathered (reused).
    gathered: Vec<u8>,
}

/// The message a channel's next content frames belong to.
#[derive(Debug)]
enum Incoming {
    Delivery(u64),
    Return {
        exchange: String,
        routing_key: String,
    },
}

/// A returned message whose body frames are still to come.
#[derive(Debug)]
struct ReturnedBody {
    returned: Returned,
    left: u64,
    digesting: Digesting,
}

#[derive(Debug)]
enum State {
    /// Reading a frame's head.
    Head { head: [u8; FRAME_HEAD], have: usize },
    /// Gathering a method or content header frame (payload and end octet) in
    /// `gathered`.
    Whole { head: [u8; FRAME_HEAD], need: usize },
    /// Passing on this many more bytes of the current frame; of a returned message's
    /// body frame, `digest` names the channel and how many of them are body bytes.
    Pass {
        left: usize,
        digest: Option<(u16, usize)>,
    },
    /// Dropping this many more bytes of a body frame of `channel` (`body` of them are
    /// body bytes): the client never sees them.
    Drop {
        left: usize,
        channel: u16,
        body: usize,
    },
    /// Not AMQP frames (the broker answered our protocol header with its own): passed on
    /// as they are; the client will say what is wrong.
    Raw,
}

const HEAD: State = State::Head {
    head: [0; FRAME_HEAD],
    have: 0,
};

impl FrameFilter {
    pub fn new(check: FrameCheck) -> Self {
        FrameFilter {
            state: HEAD,
            check,
            next_message: HashMap::new(),
            returned_bodies: HashMap::new(),
            dropping: HashMap::new(),
            gathered: Vec::new(),
        }
    }

    /// Whether the next bytes pass on unchanged, and how many of them.
    pub fn passing(&self) -> usize {
        match self.state {
            State::Pass { left, .. } => left,
            _ => 0,
        }
    }

    /// Records that these bytes were passed on by the caller (at most
    /// [`Self::passing`] of them).
    pub fn passed(&mut self, bytes: &[u8]) {
        let State::Pass { left, digest } = &mut self.state else {
            return;
        };
        let n = bytes.len().min(*left);
        *left -= n;
        let done = *left == 0;
        if let Some((channel, body_left)) = digest {
            let body = n.min(*body_left);
            *body_left -= body;
            let channel = *channel;
            if let Some(returned) = self.returned_bodies.get_mut(&channel) {
                returned.digesting.update(&bytes[..body]);
            }
        }
        if done {
            if let State::Pass {
                digest: Some((channel, _)),
                ..
            } = self.state
            {
                self.body_frame_done(channel);
            }
            self.state = HEAD;
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
                State::Pass { left, .. } => {
                    let n = (*left).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    self.passed(&input[..n]);
                    input = &input[n..];
                }
                State::Drop {
                    left,
                    channel,
                    body,
                } => {
                    let n = (*left).min(input.len());
                    *left -= n;
                    input = &input[n..];
                    if *left == 0 {
                        let (channel, body) = (*channel, *body as u64);
                        self.state = HEAD;
                        if let Some(dropping) = self.dropping.get_mut(&channel) {
                            *dropping = dropping.saturating_sub(body);
                            if *dropping == 0 {
                                self.dropping.remove(&channel);
                            }
                        }
                    }
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
                        let channel = u16::from_be_bytes([head[1], head[2]]);
                        if head[0] == FRAME_BODY && self.dropping.contains_key(&channel) {
                            self.state = State::Drop {
                                left: size + 1,
                                channel,
                                body: size,
                            };
                        } else if !checked {
                            out.extend_from_slice(&head);
                            let digest = (head[0] == FRAME_BODY
                                && self.returned_bodies.contains_key(&channel))
                            .then_some((channel, size));
                            self.state = State::Pass {
                                left: size + 1,
                                digest,
                            };
                        } else if input.len() > size {
                            // The whole frame is here: checked in place.
                            self.state = HEAD;
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
                        self.state = HEAD;
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
        let (kind, checked) = if head[0] == FRAME_METHOD {
            let (kind, checked) = check_method(payload);
            (Some(kind), checked)
        } else {
            (None, check_content_header(payload))
        };
        let mut rewritten = checked.rewritten.clone();
        let sent = payload;
        let payload = checked.rewritten.as_deref().unwrap_or(payload);
        match kind {
            Some(MethodKind::Delivery(tag)) => {
                self.next_message.insert(channel, Incoming::Delivery(tag));
            }
            Some(MethodKind::Return) => match returned_route(payload) {
                Some((exchange, routing_key)) => {
                    self.next_message.insert(
                        channel,
                        Incoming::Return {
                            exchange,
                            routing_key,
                        },
                    );
                }
                None => {
                    self.next_message.remove(&channel);
                }
            },
            Some(MethodKind::ChannelReset) => {
                self.next_message.remove(&channel);
                self.returned_bodies.remove(&channel);
                self.dropping.remove(&channel);
                self.check.reports.forget_channel(channel);
                self.check.returns.forget_channel(channel);
            }
            Some(MethodKind::Other) => {}
            None => {
                let original = checked.rewritten.is_some().then_some(sent);
                if let Some(smaller) =
                    self.content_header(channel, payload, &checked.report, original)
                {
                    rewritten = Some(smaller);
                }
            }
        }
        if kind.is_some()
            && !checked.report.is_empty()
            && let Some(Incoming::Delivery(tag)) = self.next_message.get(&channel)
        {
            self.check
                .reports
                .file(channel, *tag, checked.report.clone());
        }
        match &rewritten {
            Some(payload) => {
                let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
                out.push(head[0]);
                out.extend_from_slice(&head[1..3]);
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(payload);
                out.push(FRAME_END);
            }
            None => {
                out.extend_from_slice(&head);
                out.extend_from_slice(frame);
            }
        }
    }

    /// A content header (as checked) on `channel`: files what was found for a delivery
    /// (with the `original` payload, when it had to be rewritten, on a connection that
    /// keeps it; and, for one whose body is over the limit, returns the header announcing
    /// an empty body, and drops the body's frames); starts a returned message's record.
    fn content_header(
        &mut self,
        channel: u16,
        payload: &[u8],
        report: &super::WireReport,
        original: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        match self.next_message.get(&channel) {
            Some(Incoming::Delivery(tag)) => {
                let tag = *tag;
                let size = content_summary(payload).map_or(0, |(size, _)| size);
                let oversized = self.check.max_body_bytes.is_some_and(|max| size > max);
                let mut report = report.clone();
                if self.check.verbatim.is_some()
                    && let Some(original) = original
                {
                    report.original_header = Some(original.to_vec());
                }
                let mut smaller = None;
                if oversized && let Some(empty) = with_body_size(payload, 0) {
                    report.body_omitted = Some(size);
                    self.dropping.insert(channel, size);
                    smaller = Some(empty);
                }
                if !report.is_empty() {
                    self.check.reports.file(channel, tag, report);
                }
                smaller
            }
            Some(Incoming::Return { .. }) => {
                let Some(Incoming::Return {
                    exchange,
                    routing_key,
                }) = self.next_message.remove(&channel)
                else {
                    return None;
                };
                let (size, message_id) = content_summary(payload)?;
                let returned = ReturnedBody {
                    returned: Returned {
                        exchange,
                        routing_key,
                        message_id,
                        body: Digesting::default().finish(),
                    },
                    left: size,
                    digesting: Digesting::default(),
                };
                if size == 0 {
                    self.check.returns.file(channel, returned.returned);
                } else {
                    self.returned_bodies.insert(channel, returned);
                }
                None
            }
            None => None,
        }
    }

    /// A body frame of a returned message passed: files the message once its body is
    /// complete.
    fn body_frame_done(&mut self, channel: u16) {
        let Some(body) = self.returned_bodies.get_mut(&channel) else {
            return;
        };
        let seen = body.digesting.finish();
        if seen.len < body.left {
            return;
        }
        if let Some(mut body) = self.returned_bodies.remove(&channel) {
            body.returned.body = seen;
            self.check.returns.file(channel, body.returned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_reports(reports: &WireReports) -> FrameCheck {
        FrameCheck {
            reports: reports.clone(),
            ..FrameCheck::default()
        }
    }

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
            &mut FrameFilter::new(FrameCheck::default()),
            &input,
            input.len(),
        );
        // "id" and U+FFFD would not fit the 3 bytes sent: the header frame carries "id",
        // one byte shorter.
        assert_eq!(whole.len(), input.len() - 1);
        for chunk in 1..input.len() {
            let reports = WireReports::default();
            let out = run(&mut FrameFilter::new(with_reports(&reports)), &input, chunk);
            assert_eq!(out, whole, "fed {chunk} bytes at a time");
            let report = reports.take(1, 9).expect("filed under channel 1, tag 9");
            assert_eq!(report.problems, ["message_id: not UTF-8"]);
            assert!(reports.take(1, 9).is_none(), "taken once");
        }
    }

    /// A connection that puts messages back keeps a rewritten content header as it was
    /// sent, in the delivery's report; others (the worker's) never hold it.
    #[test]
    fn a_rewritten_header_is_kept_as_sent_only_where_asked_for() {
        let input = stream(4);
        for (verbatim, kept) in [
            (None, None),
            (Some(Verbatim::default()), Some(bad_header())),
        ] {
            let reports = WireReports::default();
            let check = FrameCheck {
                reports: reports.clone(),
                verbatim,
                ..FrameCheck::default()
            };
            run(&mut FrameFilter::new(check), &input, 5);
            let report = reports.take(1, 4).unwrap();
            assert_eq!(report.original_header, kept);
        }
        // A header that needs no change is not kept.
        let reports = WireReports::default();
        let check = FrameCheck {
            reports: reports.clone(),
            verbatim: Some(Verbatim::default()),
            ..FrameCheck::default()
        };
        let fine = [
            frame(FRAME_METHOD, 1, &deliver(5)),
            frame(FRAME_HEADER, 1, &header_with_body(3)),
            frame(FRAME_BODY, 1, b"abc"),
        ]
        .concat();
        assert_eq!(run(&mut FrameFilter::new(check), &fine, 64), fine);
        assert!(reports.take(1, 5).is_none());
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
            run(&mut FrameFilter::new(with_reports(&reports)), &input, 7),
            input
        );
        assert!(reports.take(1, 1).is_none());
    }

    #[test]
    fn a_channel_opened_again_forgets_its_reports() {
        let reports = WireReports::default();
        let mut filter = FrameFilter::new(with_reports(&reports));
        let input = [
            stream(5),
            frame(FRAME_METHOD, 1, &[0, 20, 0, 11, 0, 0, 0, 0]),
        ]
        .concat();
        run(&mut filter, &input, 64);
        assert!(reports.take(1, 5).is_none());
    }

    /// A content header with a body of `size` and a message id.
    fn header_with_body(size: u64) -> Vec<u8> {
        let mut out = vec![0, 60, 0, 0];
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&(1u16 << 7).to_be_bytes());
        out.extend(short(b"m-1"));
        out
    }

    /// A body over the connection's limit never reaches the client: the header says the
    /// body is empty, the body's frames (on its channel, between others) are dropped, the
    /// report names the size, and the next delivery passes as it came.
    #[test]
    fn a_body_over_the_limit_is_dropped_and_reported_by_its_size() {
        let big = [
            frame(FRAME_METHOD, 1, &deliver(7)),
            frame(FRAME_HEADER, 1, &header_with_body(300)),
            frame(FRAME_BODY, 1, &[0xAA; 200]),
            frame(8, 0, b""),
            frame(FRAME_BODY, 1, &[0xAA; 100]),
        ]
        .concat();
        let small = [
            frame(FRAME_METHOD, 1, &deliver(8)),
            frame(FRAME_HEADER, 1, &header_with_body(3)),
            frame(FRAME_BODY, 1, b"abc"),
        ]
        .concat();
        let want = [
            frame(FRAME_METHOD, 1, &deliver(7)),
            frame(FRAME_HEADER, 1, &header_with_body(0)),
            frame(8, 0, b""),
            small.clone(),
        ]
        .concat();
        let input = [big, small].concat();
        for chunk in [1, 7, 64, input.len()] {
            let reports = WireReports::default();
            let check = FrameCheck {
                reports: reports.clone(),
                max_body_bytes: Some(100),
                ..FrameCheck::default()
            };
            assert_eq!(
                run(&mut FrameFilter::new(check), &input, chunk),
                want,
                "{chunk}"
            );
            assert_eq!(reports.take(1, 7).and_then(|r| r.body_omitted), Some(300));
            assert!(reports.take(1, 8).is_none());
        }
        // Without a limit, it all passes.
        assert_eq!(
            run(&mut FrameFilter::new(FrameCheck::default()), &input, 64),
            input
        );
    }

    #[test]
    fn a_protocol_header_from_the_broker_passes_as_it_is() {
        let input = b"AMQP\x00\x00\x09\x01".to_vec();
        assert_eq!(
            run(&mut FrameFilter::new(FrameCheck::default()), &input, 3),
            input
        );
    }
}
