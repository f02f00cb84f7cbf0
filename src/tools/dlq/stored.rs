//! Reading dead letters, for the `dlq` commands: what one is (vendor, kind, reason,
//! when, where it came from), which ones a filter picks, and how they group. Pure: the
//! broker glue hands over each dead letter's routing key and headers as plain values.
//!
//! Two shapes are read alike:
//!
//! - the worker's own: routing key `{vendor}.{kind}`, the reason in
//!   `x-normalizer-error-kind`, `x-normalizer-error`, `x-normalizer-failed-at`, and where
//!   it came from in `x-original-exchange` and `x-original-routing-key`;
//! - the broker's, for a raw message over the raw queue's delivery limit (or rejected
//!   without requeue): routing key `unknown.delivery_limit` and only `x-death`, whose
//!   first entry says the reason, the time, the exchange and the routing keys. One
//!   rejected with a body over `limits.max_body_bytes` is one the worker left to the
//!   broker unread: it reads as `body_too_large` ([`StoredDeadLetter::read_with_limit`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::contract::{DELIVERY_LIMIT_ROUTING_KEY, DeadLetterKind, headers};

/// The first `x-death` entry of a broker-made dead letter, as plain values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Death {
    pub reason: Option<String>,
    pub exchange: Option<String>,
    pub routing_keys: Vec<String>,
    pub time: Option<DateTime<Utc>>,
}

/// One dead letter as the broker delivered it, as plain values.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    /// Its own routing key: for a copy a walk put back, the one kept in
    /// [`headers::DEAD_LETTER_ROUTING_KEY`] (the walk tells which).
    pub routing_key: String,
    /// Text headers (long strings), by name.
    pub headers: BTreeMap<String, String>,
    pub death: Option<Death>,
    pub message_id: Option<String>,
    pub body_len: usize,
    /// How many times it was replayed already (`x-replay-count`).
    pub replays: u64,
}

/// Who made the dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shape {
    /// The worker, with its reason.
    Worker,
    /// The broker's dead-lettering of the raw queue (delivery limit, or a reject).
    Broker,
}

/// What a dead letter is.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    pub shape: Shape,
    /// A vendor key, or `unknown`.
    pub vendor: String,
    /// A [`DeadLetterKind`] as the dead letter says it (the worker's header, the broker's
    /// [`DeadLetterKind::DeliveryLimit`]); text, since a header may say anything.
    pub kind: String,
    pub detail: String,
    pub failed_at: Option<DateTime<Utc>>,
    pub original_exchange: String,
    pub original_routing_key: String,
    pub message_id: Option<String>,
    pub body_len: usize,
    /// How many times it was replayed already (`x-replay-count`).
    pub replays: u64,
}

impl StoredDeadLetter {
    /// [`StoredDeadLetter::read`], knowing the worker's body limit: a broker-made dead
    /// letter of a raw message rejected with a larger body is one the worker never read,
    /// and reads as `body_too_large`.
    pub fn read_with_limit(d: &Delivered, max_body_bytes: usize) -> StoredDeadLetter {
        let mut info = StoredDeadLetter::read(d);
        let rejected =
            d.death.as_ref().and_then(|death| death.reason.as_deref()) == Some("rejected");
        if info.shape == Shape::Broker && rejected && d.body_len > max_body_bytes {
            info.kind = DeadLetterKind::BodyTooLarge.as_str().to_owned();
            info.detail = format!(
                "body of {} bytes, over limits.max_body_bytes ({max_body_bytes}): not read; dead-lettered by the broker",
                d.body_len
            );
        }
        info
    }

    pub fn read(d: &Delivered) -> StoredDeadLetter {
        let routing_key = d.routing_key.as_str();
        let (vendor, kind_from_key) = routing_key.split_once('.').unwrap_or(("unknown", ""));
        let text = |name: &str| d.headers.get(name).cloned();
        // The broker's dead-lettering of the raw queue always uses its own routing key,
        // which the worker never does: a message carrying the worker's headers under it
        // got them from whoever published the raw message.
        let broker_made = routing_key == DELIVERY_LIMIT_ROUTING_KEY;
        if let Some(kind) = text(headers::ERROR_KIND).filter(|_| !broker_made) {
            return StoredDeadLetter {
                shape: Shape::Worker,
                vendor: vendor.to_owned(),
                kind,
                detail: text(headers::ERROR).unwrap_or_default(),
                failed_at: text(headers::FAILED_AT)
                    .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                original_exchange: text(headers::ORIGINAL_EXCHANGE).unwrap_or_default(),
                original_routing_key: text(headers::ORIGINAL_ROUTING_KEY).unwrap_or_default(),
                message_id: d.message_id.clone(),
                body_len: d.body_len,
                replays: d.replays,
            };
        }
        let death = d.death.clone().unwrap_or_default();
        let reason = death.reason.clone().unwrap_or_else(|| "unknown".into());
        let mut detail = format!("dead-lettered by the broker: {reason}");
        let forged: Vec<&str> = d
            .headers
            .keys()
            .map(String::as_str)
            .filter(|name| WORKER_HEADERS.contains(name))
            .collect();
        if !forged.is_empty() {
            detail.push_str(&format!(
                "; carries {} the worker did not write (set by its publisher): unverified, ignored",
                forged.join(", ")
            ));
        }
        StoredDeadLetter {
            shape: Shape::Broker,
            vendor: "unknown".into(),
            kind: if routing_key == DELIVERY_LIMIT_ROUTING_KEY {
                DeadLetterKind::DeliveryLimit.as_str().to_owned()
            } else {
                kind_from_key.to_owned()
            },
            detail,
            failed_at: death.time,
            original_exchange: death.exchange.unwrap_or_default(),
            original_routing_key: death.routing_keys.first().cloned().unwrap_or_default(),
            message_id: d.message_id.clone(),
            body_len: d.body_len,
            replays: d.replays,
        }
    }

    /// Where `dlq replay` would publish it, if it may: the exchange it names must be one
    /// of `allowed` (the configured inputs), and it must have been replayed fewer than
    /// `max_replays` times unless `ignore_limit`.
    pub fn replay_target(
        &self,
        allowed: &[&str],
        max_replays: u64,
        ignore_limit: bool,
    ) -> Result<(&str, &str), NotReplayable> {
        if self.original_exchange.is_empty() {
            return Err(NotReplayable::NoOrigin);
        }
        if !allowed.contains(&self.original_exchange.as_str()) {
            return Err(NotReplayable::NotAnInput(self.original_exchange.clone()));
        }
        if !ignore_limit && self.replays >= max_replays {
            return Err(NotReplayable::ReplayedEnough);
        }
        Ok((&self.original_exchange, &self.original_routing_key))
    }
}

/// The headers the worker writes on its dead letters.
const WORKER_HEADERS: [&str; 5] = [
    headers::ERROR_KIND,
    headers::ERROR,
    headers::FAILED_AT,
    headers::ORIGINAL_EXCHANGE,
    headers::ORIGINAL_ROUTING_KEY,
];

/// Why `dlq replay` leaves a matching dead letter where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReplayable {
    /// Where its raw message was published is unknown.
    NoOrigin,
    /// It names an exchange that is not a configured input.
    NotAnInput(String),
    /// Replayed `dead_letter.max_replays` times already.
    ReplayedEnough,
}

/// Which dead letters a `dlq` command acts on; every part that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub vendor: Option<String>,
    pub kind: Option<String>,
    pub message_id: Option<String>,
    pub failed_before: Option<DateTime<Utc>>,
    pub failed_after: Option<DateTime<Utc>>,
    /// The original routing key (where the raw message was published).
    pub routing_key: Option<String>,
}

impl Filter {
    pub fn matches(&self, info: &StoredDeadLetter) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        eq(&self.vendor, &info.vendor)
            && eq(&self.kind, &info.kind)
            && eq(&self.routing_key, &info.original_routing_key)
            && self
                .message_id
                .as_deref()
                .is_none_or(|m| info.message_id.as_deref() == Some(m))
            && self
                .failed_before
                .is_none_or(|t| info.failed_at.is_some_and(|f| f < t))
            && self
                .failed_after
                .is_none_or(|t| info.failed_at.is_some_and(|f| f > t))
    }
}

/// Dead letters of one vendor and kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    pub count: u64,
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    details: BTreeMap<String, u64>,
}

impl Group {
    /// The detail most of them share (the first of equals, in text order), and how many.
    pub fn most_common_detail(&self) -> Option<(&str, u64)> {
        self.common_details(1).into_iter().next()
    }

    /// The `n` details most of them share, most first (equals in text order), with how
    /// many share each.
    pub fn common_details(&self, n: usize) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> =
            self.details.iter().map(|(d, c)| (d.as_str(), *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(n);
        all
    }

    /// How many different details the group has.
    pub fn distinct_details(&self) -> usize {
        self.details.len()
    }
}

/// How many details a line of `dlq stats` shows per group.
pub const STATS_DETAILS: usize = 3;

/// Dead letters grouped by (vendor, kind), in that order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub groups: BTreeMap<(String, String), Group>,
}

impl Stats {
    pub fn add(&mut self, info: &StoredDeadLetter) {
        let g = self
            .groups
            .entry((info.vendor.clone(), info.kind.clone()))
            .or_default();
        g.count += 1;
        if let Some(t) = info.failed_at {
            g.oldest = Some(g.oldest.map_or(t, |o| o.min(t)));
            g.newest = Some(g.newest.map_or(t, |n| n.max(t)));
        }
        *g.details.entry(info.detail.clone()).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.groups.values().map(|g| g.count).sum()
    }
}

/// One line of `dlq peek`: age, vendor, kind, where it was published, size, message id,
/// detail. Tab-separated, so it reads as columns and cuts with `cut -f`.
pub fn peek_line(info: &StoredDeadLetter, now: DateTime<Utc>) -> String {
    let age = info
        .failed_at
        .map_or_else(|| "-".to_owned(), |t| age(now - t));
    format!(
        "{age}\t{}\t{}\t{}/{}\t{}B\t{}\t{}",
        info.vendor,
        info.kind,
        info.original_exchange,
        info.original_routing_key,
        info.body_len,
        info.message_id.as_deref().unwrap_or("-"),
        info.detail.replace(['\t', '\n', '\r'], " "),
    )
}

/// The lines of `dlq stats`: a header, then one per group.
pub fn stats_lines(stats: &Stats) -> Vec<String> {
    let mut lines = vec!["vendor\tkind\tcount\toldest\tnewest\tmost common details".to_owned()];
    for ((vendor, kind), g) in &stats.groups {
        let when = |t: Option<DateTime<Utc>>| {
            t.map_or_else(
                || "-".to_owned(),
                |t| crate::canonical::rfc3339_utc::format(&t),
            )
        };
        let shown = g.common_details(STATS_DETAILS);
        let mut parts: Vec<String> = shown
            .iter()
            .map(|(d, n)| {
                format!(
                    "{} ({n} of {})",
                    d.replace(['\t', '\n', '\r'], " "),
                    g.count
                )
            })
            .collect();
        let others = g.distinct_details() - shown.len();
        if others > 0 {
            let rest = g.count - shown.iter().map(|(_, n)| n).sum::<u64>();
            let s = if others == 1 { "" } else { "s" };
            parts.push(format!("{others} other detail{s} ({rest} of {})", g.count));
        }
        let detail = parts.join("; ");
        lines.push(format!(
            "{vendor}\t{kind}\t{}\t{}\t{}\t{detail}",
            g.count,
            when(g.oldest),
            when(g.newest)
        ));
    }
    lines
}

/// One line of `dlq export`: what the dead letter is, its routing key and properties as
/// the broker delivered them, and its body in base64.
pub fn export_record(
    info: &StoredDeadLetter,
    body: &[u8],
    properties: &serde_json::Value,
) -> serde_json::Value {
    use base64::Engine as _;
    serde_json::json!({
        "vendor": info.vendor,
        "kind": info.kind,
        "detail": info.detail,
        "failed_at": info.failed_at.map(|t| crate::canonical::rfc3339_utc::format(&t)),
        "original_exchange": info.original_exchange,
        "original_routing_key": info.original_routing_key,
        "message": properties,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(body),
    })
}

/// `3d4h`, `5h12m`, `7m3s`, `42s`.
fn age(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ours(vendor: &str, kind: &str, detail: &str, when: &str) -> Delivered {
        let mut headers = BTreeMap::new();
        headers.insert(headers::ERROR_KIND.to_owned(), kind.to_owned());
        headers.insert(headers::ERROR.to_owned(), detail.to_owned());
        headers.insert(headers::FAILED_AT.to_owned(), when.to_owned());
        headers.insert(
            headers::ORIGINAL_EXCHANGE.to_owned(),
            "webhooks.raw".to_owned(),
        );
        headers.insert(
            headers::ORIGINAL_ROUTING_KEY.to_owned(),
            "gateway".to_owned(),
        );
        Delivered {
            routing_key: format!("{vendor}.{kind}"),
            headers,
            death: None,
            message_id: Some("gw-1".into()),
            body_len: 10,
            replays: 0,
        }
    }

    #[test]
    fn both_shapes_read_alike() {
        let info =
            StoredDeadLetter::read(&ours("deel", "invalid_json", "EOF", "2026-01-02T03:04:05Z"));
        assert_eq!(info.shape, Shape::Worker);
        assert_eq!(
            (info.vendor.as_str(), info.kind.as_str()),
            ("deel", "invalid_json")
        );
        assert_eq!(info.failed_at, Some(at("2026-01-02T03:04:05Z")));
        assert_eq!(info.original_routing_key, "gateway");

        let broker = Delivered {
            routing_key: DELIVERY_LIMIT_ROUTING_KEY.into(),
            death: Some(Death {
                reason: Some("delivery_limit".into()),
                exchange: Some("webhooks.raw".into()),
                routing_keys: vec!["deel".into()],
                time: Some(at("2026-01-03T00:00:00Z")),
            }),
            ..Delivered::default()
        };
        let info = StoredDeadLetter::read(&broker);
        assert_eq!(info.shape, Shape::Broker);
        assert_eq!(
            (info.vendor.as_str(), info.kind.as_str()),
            ("unknown", "delivery_limit")
        );
        assert_eq!(info.detail, "dead-lettered by the broker: delivery_limit");
        assert_eq!(info.original_exchange, "webhooks.raw");
        assert_eq!(info.original_routing_key, "deel");
        assert_eq!(info.failed_at, Some(at("2026-01-03T00:00:00Z")));
    }

    /// Rejected with a body over the limit: the worker left it to the broker unread.
    /// Rejected with a body within it, or over the delivery limit, it stays what it was.
    #[test]
    fn a_rejected_body_over_the_limit_reads_as_too_large() {
        let rejected = |body_len| Delivered {
            routing_key: DELIVERY_LIMIT_ROUTING_KEY.into(),
            death: Some(Death {
                reason: Some("rejected".into()),
                ..Death::default()
            }),
            body_len,
            ..Delivered::default()
        };
        let info = StoredDeadLetter::read_with_limit(&rejected(2_000_000), 1_048_576);
        assert_eq!(
            (info.vendor.as_str(), info.kind.as_str()),
            ("unknown", "body_too_large")
        );
        assert_eq!(
            info.detail,
            "body of 2000000 bytes, over limits.max_body_bytes (1048576): not read; dead-lettered by the broker"
        );
        assert_eq!(
            StoredDeadLetter::read_with_limit(&rejected(10), 1_048_576).kind,
            "delivery_limit"
        );
        let mut over_limit = rejected(2_000_000);
        over_limit.death.as_mut().unwrap().reason = Some("delivery_limit".into());
        assert_eq!(
            StoredDeadLetter::read_with_limit(&over_limit, 1_048_576).kind,
            "delivery_limit"
        );
    }

    #[test]
    fn worker_headers_on_a_dead_letter_the_broker_made_are_not_believed() {
        let mut d = ours(
            "deel",
            "unknown_event_type",
            "forged",
            "2026-01-02T03:04:05Z",
        );
        d.headers.insert(
            headers::ORIGINAL_EXCHANGE.to_owned(),
            "events.canonical".to_owned(),
        );
        d.routing_key = DELIVERY_LIMIT_ROUTING_KEY.to_owned();
        d.death = Some(Death {
            reason: Some("expired".into()),
            exchange: Some("webhooks.raw".into()),
            routing_keys: vec!["gateway".into()],
            time: None,
        });
        let info = StoredDeadLetter::read(&d);
        assert_eq!(info.shape, Shape::Broker);
        assert_eq!(info.vendor, "unknown");
        assert_eq!(info.original_exchange, "webhooks.raw");
        assert!(
            info.detail.contains("x-original-exchange"),
            "{}",
            info.detail
        );
        assert!(info.detail.contains("unverified"), "{}", info.detail);
        assert!(
            !info.detail.contains("forged"),
            "no header values: {}",
            info.detail
        );
    }

    #[test]
    fn a_replay_goes_only_to_a_configured_input_and_only_so_often() {
        let mut info =
            StoredDeadLetter::read(&ours("deel", "invalid_json", "EOF", "2026-01-02T03:04:05Z"));
        let inputs = ["webhooks.raw", "webhooks.raw.p0"];
        assert_eq!(
            info.replay_target(&inputs, 5, false),
            Ok(("webhooks.raw", "gateway"))
        );
        info.replays = 5;
        assert_eq!(
            info.replay_target(&inputs, 5, false),
            Err(NotReplayable::ReplayedEnough)
        );
        assert!(info.replay_target(&inputs, 5, true).is_ok());
        info.original_exchange = "events.canonical".into();
        assert_eq!(
            info.replay_target(&inputs, 5, true),
            Err(NotReplayable::NotAnInput("events.canonical".into()))
        );
        info.original_exchange = String::new();
        assert_eq!(
            info.replay_target(&inputs, 5, true),
            Err(NotReplayable::NoOrigin)
        );
    }

    #[test]
    fn filters_and_groups() {
        let letters = [
            ours("deel", "invalid_json", "EOF", "2026-01-02T00:00:00Z"),
            ours("deel", "invalid_json", "EOF", "2026-01-04T00:00:00Z"),
            ours(
                "deel",
                "invalid_json",
                "trailing comma",
                "2026-01-03T00:00:00Z",
            ),
            ours(
                "authenticate",
                "unknown_event_type",
                "x",
                "2026-01-05T00:00:00Z",
            ),
        ];
        let infos: Vec<_> = letters.iter().map(StoredDeadLetter::read).collect();
        let filter = Filter {
            vendor: Some("deel".into()),
            failed_after: Some(at("2026-01-02T12:00:00Z")),
            ..Filter::default()
        };
        assert_eq!(infos.iter().filter(|i| filter.matches(i)).count(), 2);
        let mut stats = Stats::default();
        infos.iter().for_each(|i| stats.add(i));
        assert_eq!(stats.total(), 4);
        let deel = &stats.groups[&("deel".to_owned(), "invalid_json".to_owned())];
        assert_eq!(deel.count, 3);
        assert_eq!(deel.oldest, Some(at("2026-01-02T00:00:00Z")));
        assert_eq!(deel.newest, Some(at("2026-01-04T00:00:00Z")));
        assert_eq!(deel.most_common_detail(), Some(("EOF", 2)));
        assert_eq!(deel.common_details(3), [("EOF", 2), ("trailing comma", 1)]);
        let lines = stats_lines(&stats);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            "deel\tinvalid_json\t3\t2026-01-02T00:00:00Z\t2026-01-04T00:00:00Z\tEOF (2 of 3); trailing comma (1 of 3)"
        );
        assert_eq!(
            peek_line(&infos[0], at("2026-01-03T01:02:03Z")),
            "1d1h\tdeel\tinvalid_json\twebhooks.raw/gateway\t10B\tgw-1\tEOF"
        );
    }

    /// Unmapped Deel types dead-lettered side by side: `dlq stats` shows the three most
    /// common, and how many others there are, instead of hiding all but one.
    #[test]
    fn stats_show_the_top_details_and_count_the_rest() {
        let mut stats = Stats::default();
        let types = [
            "payslip.available",
            "payslip.available",
            "payslip.available",
            "leave.created",
            "leave.created",
            "invoice.paid",
            "a.b",
            "c.d",
        ];
        for t in types {
            let letter = ours("deel", "unknown_event_type", t, "2026-01-02T00:00:00Z");
            stats.add(&StoredDeadLetter::read(&letter));
        }
        let lines = stats_lines(&stats);
        assert_eq!(
            lines[1].rsplit('\t').next().unwrap(),
            "payslip.available (3 of 8); leave.created (2 of 8); a.b (1 of 8); 2 other details (2 of 8)"
        );
    }
}
