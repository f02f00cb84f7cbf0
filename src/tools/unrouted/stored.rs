//! Events nobody was bound for, for the `unrouted` commands: which ones a `--type`
//! pattern picks, and how they group. Pure: the broker glue hands over each kept event's
//! type (its routing key) and properties as plain values.
//!
//! The canonical exchange's alternate exchange puts such events in the unrouted queue,
//! bounded by `output.unrouted_max_length` and `output.unrouted_max_age_secs`. Once a
//! team binds for a type, `unrouted replay --type PATTERN` sends the kept ones on.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

/// One kept event, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnroutedEvent {
    /// Its canonical type: the routing key it was published with.
    pub event_type: String,
    /// Its CloudEvents id (the AMQP `message_id`).
    pub id: Option<String>,
    /// Its time (the AMQP `timestamp`).
    pub time: Option<DateTime<Utc>>,
    /// When it was kept (`x-normalizer-kept-at`): its time to live counts from there.
    pub kept_at: Option<DateTime<Utc>>,
    pub size: usize,
}

/// A topic-exchange binding pattern over canonical types, as a team binds with:
/// `deel.contract.*`, `*.background_check.completed`, `deel.#`. Words are separated by
/// `.`; `*` stands for exactly one word and `#` for zero or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    words: Vec<String>,
}

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("word {0} of the pattern is empty (two dots in a row, or a dot at an end)")]
    EmptyWord(usize),
    #[error("word {0} mixes * or # with other characters; each must be a whole word")]
    MixedWildcard(usize),
    #[error("the pattern is longer than 255 bytes, the longest routing key")]
    TooLong,
}

impl TypePattern {
    pub fn parse(text: &str) -> Result<TypePattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > 255 {
            return Err(PatternError::TooLong);
        }
        let mut words = Vec::new();
        for (i, word) in text.split('.').enumerate() {
            if word.is_empty() {
                return Err(PatternError::EmptyWord(i + 1));
            }
            if word.len() > 1 && word.contains(['*', '#']) {
                return Err(PatternError::MixedWildcard(i + 1));
            }
            words.push(word.to_owned());
        }
        Ok(TypePattern { words })
    }

    /// Whether a topic exchange would route `routing_key` through a binding with this
    /// pattern.
    pub fn matches(&self, routing_key: &str) -> bool {
        let key: Vec<&str> = routing_key.split('.').collect();
        // reachable[j]: the pattern words read so far can match the first j key words.
        let mut reachable = vec![false; key.len() + 1];
        reachable[0] = true;
        for word in &self.words {
            let mut next = vec![false; key.len() + 1];
            for j in 0..=key.len() {
                if !reachable[j] {
                    continue;
                }
                match word.as_str() {
                    "#" => next[j..].iter_mut().for_each(|r| *r = true),
                    "*" => {
                        if j < key.len() {
                            next[j + 1] = true;
                        }
                    }
                    literal => {
                        if key.get(j) == Some(&literal) {
                            next[j + 1] = true;
                        }
                    }
                }
            }
            reachable = next;
        }
        reachable[key.len()]
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.words.join("."))
    }
}

/// Kept events by type: count, bytes, oldest and newest event time, and when the
/// longest kept was kept.
#[derive(Debug, Default)]
pub struct Stats {
    by_type: BTreeMap<String, TypeStats>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct TypeStats {
    count: u64,
    bytes: u64,
    oldest: Option<DateTime<Utc>>,
    newest: Option<DateTime<Utc>>,
    first_kept: Option<DateTime<Utc>>,
}

impl Stats {
    pub fn add(&mut self, event: &UnroutedEvent) {
        let s = self.by_type.entry(event.event_type.clone()).or_default();
        s.count += 1;
        s.bytes += event.size as u64;
        if let Some(t) = event.time {
            s.oldest = Some(s.oldest.map_or(t, |o| o.min(t)));
            s.newest = Some(s.newest.map_or(t, |n| n.max(t)));
        }
        if let Some(t) = event.kept_at {
            s.first_kept = Some(s.first_kept.map_or(t, |o| o.min(t)));
        }
    }

    /// A header line, then one line per type, most events first (ties by type), tab
    /// separated: type, events, bytes, oldest and newest event time, when the first of
    /// them was kept and when it is dropped (kept for `max_age`).
    pub fn lines(&self, max_age: chrono::TimeDelta) -> Vec<String> {
        let mut rows: Vec<(&String, &TypeStats)> = self.by_type.iter().collect();
        rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let time = |t: Option<DateTime<Utc>>| {
            t.map_or_else(
                || "-".to_owned(),
                |t| crate::canonical::rfc3339_utc::format(&t),
            )
        };
        let mut lines =
            vec!["type\tevents\tbytes\toldest\tnewest\tfirst kept\tfirst dropped".to_owned()];
        lines.extend(rows.into_iter().map(|(t, s)| {
            format!(
                "{t}\t{}\t{}\t{}\t{}\t{}\t{}",
                s.count,
                s.bytes,
                time(s.oldest),
                time(s.newest),
                time(s.first_kept),
                time(s.first_kept.and_then(|k| k.checked_add_signed(max_age)))
            )
        }));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, key: &str) -> bool {
        TypePattern::parse(pattern).unwrap().matches(key)
    }

    #[test]
    fn patterns_match_as_a_topic_exchange_routes() {
        let cases = [
            ("deel.contract.*", "deel.contract.created", true),
            ("deel.contract.*", "deel.contract", false),
            ("deel.contract.*", "deel.contract.status.updated", false),
            (
                "*.background_check.completed",
                "authenticate.background_check.completed",
                true,
            ),
            (
                "*.background_check.completed",
                "background_check.completed",
                false,
            ),
            ("deel.#", "deel", true),
            ("deel.#", "deel.timesheet.reviewed", true),
            ("deel.#", "deeler.contract", false),
            ("#", "anything.at.all", true),
            ("#.completed", "completed", true),
            ("#.completed", "a.b.completed", true),
            ("#.completed", "a.b.completed.not", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.#.z", "a.z", true),
            ("a.*.#", "a", false),
            ("a.*.#", "a.b", true),
            ("deel.contract.created", "deel.contract.created", true),
            ("deel.contract.created", "deel.contract.createdx", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(matches(pattern, key), expected, "{pattern} on {key}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused_with_the_word() {
        assert_eq!(TypePattern::parse(""), Err(PatternError::Empty));
        assert_eq!(
            TypePattern::parse("deel..x"),
            Err(PatternError::EmptyWord(2))
        );
        assert_eq!(TypePattern::parse("deel."), Err(PatternError::EmptyWord(2)));
        assert_eq!(
            TypePattern::parse("deel.contract*"),
            Err(PatternError::MixedWildcard(2))
        );
        assert_eq!(
            TypePattern::parse(&"a".repeat(256)),
            Err(PatternError::TooLong)
        );
        assert_eq!(TypePattern::parse("deel.#").unwrap().to_string(), "deel.#");
    }

    #[test]
    fn stats_group_by_type_most_first() {
        let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
        let event = |t: &str, time, size| UnroutedEvent {
            event_type: t.into(),
            id: None,
            time,
            kept_at: time.map(|t: DateTime<Utc>| t + chrono::TimeDelta::days(30)),
            size,
        };
        let mut stats = Stats::default();
        stats.add(&event(
            "deel.contract.created",
            at("2026-01-02T00:00:00Z"),
            10,
        ));
        stats.add(&event("authenticate.x", None, 5));
        stats.add(&event(
            "deel.contract.created",
            at("2026-01-01T00:00:00Z"),
            20,
        ));
        assert_eq!(
            stats.lines(chrono::TimeDelta::days(7)),
            [
                "type\tevents\tbytes\toldest\tnewest\tfirst kept\tfirst dropped",
                "deel.contract.created\t2\t30\t2026-01-01T00:00:00Z\t2026-01-02T00:00:00Z\t2026-01-31T00:00:00Z\t2026-02-07T00:00:00Z",
                "authenticate.x\t1\t5\t-\t-\t-\t-",
            ]
        );
    }
}
