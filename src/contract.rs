//! The names the contract fixes, for every part to import: the properties the worker
//! sets, the routing key of the broker's own dead letters, the bound on a dead letter's
//! reason, and the header names of raw messages, dead letters and kept copies. Imports
//! nothing from the roles (`worker`, `tools`, `gateway`): transport and tools take their
//! names from here, not from each other.

/// The `content_type` of canonical events (CloudEvents AMQP binding, structured mode).
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// The `app_id` of everything the worker publishes.
pub const APP_ID: &str = "webhook-normalizer";
/// The routing key the raw queue dead-letters with when a message hits its delivery limit.
pub const DELIVERY_LIMIT_ROUTING_KEY: &str = "unknown.delivery_limit";
/// The longest error detail a dead letter carries; longer ones are cut at a character
/// boundary, so the reason always fits the dead letter's headers.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// Header names of the raw-message contract.
pub mod headers {
    /// Vendor hint set by the gateway.
    pub const VENDOR: &str = "x-vendor";
    /// When the gateway received the webhook (RFC 3339).
    pub const RECEIVED_AT: &str = "x-received-at";
    /// Dead-letter headers.
    pub const ERROR_KIND: &str = "x-normalizer-error-kind";
    pub const ERROR: &str = "x-normalizer-error";
    pub const FAILED_AT: &str = "x-normalizer-failed-at";
    pub const VERSION: &str = "x-normalizer-version";
    pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    /// Raw properties a dead letter must not carry as they are (they would change its
    /// fate or make it unpublishable), kept as headers instead.
    pub const ORIGINAL_EXPIRATION: &str = "x-original-expiration";
    pub const ORIGINAL_USER_ID: &str = "x-original-user-id";
    /// Raw headers the broker acts on, kept under another name.
    pub const ORIGINAL_CC: &str = "x-original-cc";
    pub const ORIGINAL_DELIVERY_COUNT: &str = "x-original-delivery-count";
    /// Which raw headers were dropped to fit the broker's frame, and why.
    pub const DROPPED_HEADERS: &str = "x-normalizer-dropped-headers";
    /// Header entries whose name repeated an earlier one in the same table, as sent:
    /// an array of `{name, value}` tables (`name` is the entry's path).
    pub const DUPLICATE_HEADERS: &str = "x-normalizer-duplicate-headers";
    /// On a kept copy (an event nobody is bound for, on the unrouted queue; a tap copy):
    /// when it was first kept (RFC 3339, UTC). A walk's copy keeps it, and the time left
    /// to live with it.
    pub const KEPT_AT: &str = "x-normalizer-kept-at";
    /// On a message that came back to the raw queue through one of the worker's own
    /// exchanges and was put in the dead-letter queue as it was: that exchange.
    pub const LOOPED_THROUGH: &str = "x-normalizer-looped-through";
    /// On an event kept on the unrouted queue: its routing key (the canonical type). The
    /// `unrouted` walk reads it on the copies it put back (they go through the default
    /// exchange, so that no other queue bound to the unrouted exchange gets one), and
    /// strips it when the event is replayed.
    pub const UNROUTED_ROUTING_KEY: &str = "x-normalizer-unrouted-routing-key";
    /// On a dead letter put in the dead-letter queue through the default exchange (a copy
    /// the `dlq` walk put back; a message that came back to the raw queue through one of
    /// the worker's own exchanges): its own routing key. Through the default exchange, no
    /// other queue bound to the dead-letter exchange gets a copy.
    pub const DEAD_LETTER_ROUTING_KEY: &str = "x-normalizer-dead-letter-routing-key";
    /// How many times a message was replayed from the dead-letter queue.
    pub const REPLAY_COUNT: &str = "x-replay-count";
}
