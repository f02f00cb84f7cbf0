//! The RabbitMQ permissions the worker, the `dlq` / `unrouted` / `tail` commands, a gateway
//! and a consuming team need, for the names in the configuration: the regular expressions
//! of `rabbitmqctl set_permissions`.
//! Pure: settings in, patterns out.
//!
//! What needs which (RabbitMQ's access control):
//!
//! - declaring an exchange or a queue: configure on it; a queue with a dead-letter
//!   exchange also write on that exchange and read on the queue; an exchange with an
//!   alternate exchange also write on that one and read on the exchange;
//! - binding a queue to an exchange: write on the queue, read on the exchange;
//! - binding or unbinding a queue: write on the queue, read on the exchange;
//! - publishing: write on the exchange (`amq.default` for the default exchange, which
//!   the worker keeps events nobody is bound for through);
//! - consuming or `basic.get`: read on the queue;
//! - the walks' lock, an exclusive queue `{queue}.lock`: configure on it;
//! - `tail`'s queue, exclusive and named by the broker (`amq.gen-…`): configure, write
//!   and read on it.

use crate::config::Topology;

/// One user's permissions on the vhost: three regular expressions over resource names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl Permissions {
    /// Both sets at once, for one user doing both jobs (RabbitMQ keeps one set of
    /// permissions per user and vhost).
    pub fn union(&self, other: &Permissions) -> Permissions {
        let merge = |a: &str, b: &str| {
            let names = |p: &str| -> Vec<String> {
                p.strip_prefix("^(")
                    .and_then(|p| p.strip_suffix(")$"))
                    .map(alternatives)
                    .unwrap_or_default()
            };
            let mut all = names(a);
            for n in names(b) {
                if !all.contains(&n) {
                    all.push(n);
                }
            }
            if all.is_empty() {
                none()
            } else {
                format!("^({})$", all.join("|"))
            }
        };
        Permissions {
            configure: merge(&self.configure, &other.configure),
            write: merge(&self.write, &other.write),
            read: merge(&self.read, &other.read),
        }
    }

    /// The `rabbitmqctl set_permissions` line that grants them.
    pub fn command(&self, vhost: &str, user: &str) -> String {
        format!(
            "rabbitmqctl set_permissions -p {} {} {} {} {}",
            shell_quote(vhost),
            shell_quote(user),
            shell_quote(&self.configure),
            shell_quote(&self.write),
            shell_quote(&self.read)
        )
    }
}

/// What `webhook-normalizer run` needs: with `amqp.declare_topology` it declares and
/// binds everything; without, it only checks (passively) that it all exists, and needs
/// no configure permission at all.
pub fn worker(s: &Topology) -> Permissions {
    let raw_exchange = s.input.exchange.as_str();
    let raw_queue = s.input.queue.as_str();
    let canonical = s.output.exchange.as_str();
    let tap = s.output.tap_exchange.as_str();
    let unrouted_exchange = s.output.unrouted_exchange.as_str();
    let unrouted_queue = s.output.unrouted_queue.as_str();
    let dead_letter_exchange = s.dead_letter.exchange.as_str();
    let dead_letter_queue = s.dead_letter.queue.as_str();
    if !s.declare {
        return Permissions {
            configure: none(),
            // Events, their copies kept and tapped, and dead letters.
            write: any_of(&[canonical, "amq.default", tap, dead_letter_exchange]),
            read: any_of(&[raw_queue]),
        };
    }
    // The history stream: declared, and bound to the tap exchange.
    let history: &[&str] = if s.history.enabled {
        &[s.history.stream.as_str()]
    } else {
        &[]
    };
    let with_history = |names: &[&str]| -> Vec<String> {
        names.iter().chain(history).map(|n| escape(n)).collect()
    };
    let history_exchange: &[&str] = if s.history.enabled { &[tap] } else { &[] };
    let with_history_exchange = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .chain(history_exchange)
            .map(|n| escape(n))
            .collect()
    };
    Permissions {
        configure: pattern(with_history(&[
            raw_exchange,
            raw_queue,
            canonical,
            tap,
            unrouted_exchange,
            unrouted_queue,
            dead_letter_exchange,
            dead_letter_queue,
        ])),
        // Publishing events (their copies kept through the default exchange and tapped)
        // and dead letters; binding the queues (and unbinding the unrouted one); the
        // canonical exchange's alternate exchange and the raw queue's dead-letter exchange.
        write: pattern(with_history(&[
            canonical,
            "amq.default",
            tap,
            dead_letter_exchange,
            raw_queue,
            unrouted_queue,
            dead_letter_queue,
            unrouted_exchange,
        ])),
        // Consuming; the bindings' exchanges (the tap's for the history); declaring with
        // an alternate or dead-letter exchange.
        read: pattern(with_history_exchange(&[
            raw_queue,
            raw_exchange,
            unrouted_exchange,
            dead_letter_exchange,
            canonical,
        ])),
    }
}

/// What the `dlq`, `unrouted`, `history` and `tail` commands need (an operator's user, apart from
/// the worker's): the lock queues, reading the two queues, copies through the default
/// exchange, replays to the raw and the canonical exchange; and for `tail`, a
/// server-named exclusive queue (`amq.gen-…`: configure to declare it, write to bind it,
/// read to consume it) bound to the tap exchange (read).
pub fn operator(s: &Topology) -> Permissions {
    let dead_letter_lock = format!("{}.lock", s.dead_letter.queue);
    let unrouted_lock = format!("{}.lock", s.output.unrouted_queue);
    let names = |names: &[&str]| names.iter().map(|n| escape(n)).collect::<Vec<_>>();
    let with_tail_queue = |mut alternatives: Vec<String>| {
        alternatives.push(SERVER_NAMED_QUEUES.to_owned());
        pattern(alternatives)
    };
    let mut reads = names(&[
        &s.dead_letter.queue,
        &s.output.unrouted_queue,
        &s.output.tap_exchange,
    ]);
    if s.history.enabled {
        // Reading the history (its walks read a stream without taking anything).
        reads.push(escape(&s.history.stream));
    }
    Permissions {
        configure: with_tail_queue(names(&[&dead_letter_lock, &unrouted_lock])),
        write: with_tail_queue(names(&[
            "amq.default",
            &s.input.exchange,
            &s.output.exchange,
        ])),
        read: with_tail_queue(reads),
    }
}

/// What a gateway's user needs (`webhook-normalizer ingest` or `publish`, or a gateway of
/// one's own): publishing to the raw exchange, and nothing else. It declares nothing (the
/// worker or `webhook-normalizer topology` does) and reads nothing (confirms and returns
/// come on its own channel).
pub fn gateway(s: &Topology) -> Permissions {
    Permissions {
        configure: none(),
        write: any_of(&[&s.input.exchange]),
        read: none(),
    }
}

/// A consuming team's queue prefix that would give it our own names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeamQueuesError {
    #[error("the consuming team's queue prefix is empty: it would match every name")]
    Empty,
    #[error(
        "the consuming team's queue prefix '{prefix}' matches '{name}', one of the worker's names: choose a prefix of the team's own"
    )]
    Ours { prefix: String, name: String },
}

/// What a consuming team's user needs: declaring its own queues (every name starting with
/// `queue_prefix`: configure), binding them to the canonical exchange (write on the queue,
/// read on the exchange) and consuming them (read). Nothing of ours beyond reading the
/// canonical exchange: it cannot publish events, nor bind to the raw, tap or unrouted
/// exchanges. A prefix that matches one of the configured names is refused.
pub fn consumer(s: &Topology, queue_prefix: &str) -> Result<Permissions, TeamQueuesError> {
    if queue_prefix.is_empty() {
        return Err(TeamQueuesError::Empty);
    }
    let ours = [
        &s.input.exchange,
        &s.input.queue,
        &s.output.exchange,
        &s.output.tap_exchange,
        &s.output.unrouted_exchange,
        &s.output.unrouted_queue,
        &s.dead_letter.exchange,
        &s.dead_letter.queue,
        &s.history.stream,
    ];
    if let Some(name) = ours.iter().find(|n| n.starts_with(queue_prefix)) {
        return Err(TeamQueuesError::Ours {
            prefix: queue_prefix.to_owned(),
            name: name.to_string(),
        });
    }
    let queues = format!("{}.*", escape(queue_prefix));
    Ok(Permissions {
        configure: pattern(vec![queues.clone()]),
        write: pattern(vec![queues.clone()]),
        read: pattern(vec![escape(&s.output.exchange), queues]),
    })
}

/// The names RabbitMQ gives queues declared without one, as `tail` declares its own.
const SERVER_NAMED_QUEUES: &str = r"amq\.gen-.*";

/// A pattern matching exactly these names.
fn any_of(names: &[&str]) -> String {
    pattern(names.iter().map(|n| escape(n)).collect())
}

/// A pattern matching any of these regular expressions, each once.
fn pattern(alternatives: Vec<String>) -> String {
    let mut unique: Vec<String> = Vec::new();
    for alternative in alternatives {
        if !unique.contains(&alternative) {
            unique.push(alternative);
        }
    }
    format!("^({})$", unique.join("|"))
}

/// The alternatives of a pattern `any_of` made: split at each `|` it did not escape.
fn alternatives(inner: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in inner.chars() {
        if c == '|' && !escaped {
            out.push(String::new());
            continue;
        }
        escaped = c == '\\' && !escaped;
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

/// Matches no name.
fn none() -> String {
    "^$".to_owned()
}

/// `name` as a regular expression that matches it literally.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Single-quoted for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default names, whatever `NORMALIZER__*` variables the configuration tests
    /// set meanwhile.
    fn defaults() -> Topology {
        crate::config::Settings::defaults().topology()
    }

    /// Reviewed by hand against the list in the module's documentation.
    #[test]
    fn the_worker_needs_exactly_its_names() {
        let p = worker(&defaults());
        assert_eq!(
            p.configure,
            r"^(webhooks\.raw|normalizer\.raw|events\.canonical|events\.tap|events\.unrouted|webhooks\.dead-letter|normalizer\.dead-letter)$"
        );
        assert_eq!(
            p.write,
            r"^(events\.canonical|amq\.default|events\.tap|webhooks\.dead-letter|normalizer\.raw|events\.unrouted|normalizer\.dead-letter)$"
        );
        assert_eq!(
            p.read,
            r"^(normalizer\.raw|webhooks\.raw|events\.unrouted|webhooks\.dead-letter|events\.canonical)$"
        );
    }

    /// With the history on: the worker declares the stream and binds it to the tap
    /// exchange; the operator reads it; a team neither reads nor writes it.
    #[test]
    fn the_history_is_the_workers_to_write_and_the_operators_to_read() {
        let mut s = defaults();
        s.history.enabled = true;
        let p = worker(&s);
        assert_eq!(
            p.configure,
            r"^(webhooks\.raw|normalizer\.raw|events\.canonical|events\.tap|events\.unrouted|webhooks\.dead-letter|normalizer\.dead-letter|events\.history)$"
        );
        assert_eq!(
            p.write,
            r"^(events\.canonical|amq\.default|events\.tap|webhooks\.dead-letter|normalizer\.raw|events\.unrouted|normalizer\.dead-letter|events\.history)$"
        );
        assert_eq!(
            p.read,
            r"^(normalizer\.raw|webhooks\.raw|events\.unrouted|webhooks\.dead-letter|events\.canonical|events\.tap)$"
        );
        let o = operator(&s);
        assert_eq!(
            o.read,
            r"^(normalizer\.dead-letter|events\.unrouted|events\.tap|events\.history|amq\.gen-.*)$"
        );
        assert_eq!(
            o.write,
            operator(&defaults()).write,
            "no write to the history"
        );
        let team = consumer(&s, "team.").unwrap();
        assert!(!team.read.contains("history") && !team.write.contains("history"));
        assert_eq!(
            consumer(&s, "events.h"),
            Err(TeamQueuesError::Ours {
                prefix: "events.h".into(),
                name: "events.history".into()
            })
        );
    }

    #[test]
    fn a_pre_declared_topology_needs_no_configure_permission() {
        let mut s = defaults();
        s.declare = false;
        let p = worker(&s);
        assert_eq!(p.configure, "^$");
        assert_eq!(
            p.write,
            r"^(events\.canonical|amq\.default|events\.tap|webhooks\.dead-letter)$"
        );
        assert_eq!(p.read, r"^(normalizer\.raw)$");
    }

    #[test]
    fn one_user_for_both_gets_the_union() {
        let mut s = defaults();
        s.declare = false;
        let both = worker(&s).union(&operator(&s));
        assert_eq!(
            both.configure,
            r"^(normalizer\.dead-letter\.lock|events\.unrouted\.lock|amq\.gen-.*)$"
        );
        assert_eq!(
            both.write,
            r"^(events\.canonical|amq\.default|events\.tap|webhooks\.dead-letter|webhooks\.raw|amq\.gen-.*)$"
        );
        assert_eq!(
            both.read,
            r"^(normalizer\.raw|normalizer\.dead-letter|events\.unrouted|events\.tap|amq\.gen-.*)$"
        );
    }

    #[test]
    fn a_gateway_only_publishes_to_the_raw_exchange() {
        let p = gateway(&defaults());
        assert_eq!(p.configure, "^$");
        assert_eq!(p.write, r"^(webhooks\.raw)$");
        assert_eq!(p.read, "^$");
    }

    #[test]
    fn a_consuming_team_owns_its_queues_and_reads_the_canonical_exchange() {
        let p = consumer(&defaults(), "team.contracts").unwrap();
        assert_eq!(p.configure, r"^(team\.contracts.*)$");
        assert_eq!(p.write, r"^(team\.contracts.*)$");
        assert_eq!(p.read, r"^(events\.canonical|team\.contracts.*)$");
    }

    #[test]
    fn a_team_prefix_that_matches_our_names_is_refused() {
        let s = defaults();
        assert_eq!(consumer(&s, ""), Err(TeamQueuesError::Empty));
        for (prefix, name) in [
            ("events.", "events.canonical"),
            ("normalizer", "normalizer.raw"),
            ("w", "webhooks.raw"),
        ] {
            assert_eq!(
                consumer(&s, prefix),
                Err(TeamQueuesError::Ours {
                    prefix: prefix.into(),
                    name: name.into()
                })
            );
        }
    }

    #[test]
    fn names_are_matched_literally_and_quoted_for_the_shell() {
        assert_eq!(any_of(&["a.b", "a.b", "c*(d)"]), r"^(a\.b|c\*\(d\))$");
        assert_eq!(alternatives(&escape("x|y\\")), [r"x\|y\\"]);
        assert_eq!(alternatives(r"a|b\.c"), ["a", r"b\.c"]);
        let p = operator(&defaults());
        assert_eq!(
            p.command("it's", "ops"),
            r#"rabbitmqctl set_permissions -p 'it'\''s' 'ops' '^(normalizer\.dead-letter\.lock|events\.unrouted\.lock|amq\.gen-.*)$' '^(amq\.default|webhooks\.raw|events\.canonical|amq\.gen-.*)$' '^(normalizer\.dead-letter|events\.unrouted|events\.tap|amq\.gen-.*)$'"#
        );
    }
}
