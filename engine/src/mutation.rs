//! Known-bad changes that can be switched on, one at a time, to show that the tests (the
//! simulator above all) catch them: each call site asks [`active`] whether its mutation is
//! the one in force and, if so, does the wrong thing on purpose.
//!
//! Compiled in only with the `mutations` feature; without it [`active`] is the constant
//! `false` and every call site folds away. The mutation in force is the one named by the
//! `WALSHIP_MUTATION` environment variable, or by [`set`].

/// Every mutation the engine knows, by the name its call site asks for.
pub const ENGINE_MUTATIONS: &[&str] = &[
    SKIP_SEGMENT_DIR_FSYNC,
    SKIP_LOG_DIR_PARENT_FSYNC,
    SEAL_BYPASS,
    PROVISION_PAST_BOUNDARY,
    FLUSH_CLAIMS_APPENDED,
];

/// Every mutation of the replication layer (its call sites are in `walship-transport`).
pub const TRANSPORT_MUTATIONS: &[&str] = &[
    HELLO_END_AS_FLUSHED,
    WELCOME_EPOCH_UNCHECKED,
    REMOTE_FLUSH_ON_WRITTEN,
    UNCONFIRMED_TRUNCATES,
];

/// A leader counts a reconnecting follower's log end (which may hold bytes it never
/// flushed) as flushed.
pub const HELLO_END_AS_FLUSHED: &str = "hello-end-as-flushed";
/// A follower accepts a `Welcome` without checking its epoch against the newest it saw.
pub const WELCOME_EPOCH_UNCHECKED: &str = "welcome-epoch-unchecked";
/// The quorum confirms `RemoteFlush` on what followers wrote, not what they flushed.
pub const REMOTE_FLUSH_ON_WRITTEN: &str = "remote-flush-on-written";

/// A leader not yet confirmed by a quorum in its epoch welcomes a follower that holds
/// written records it lacks (and so cuts them), as before issue 12: an operator's
/// promotion over a live leader then loses what the old leader acknowledged meanwhile.
pub const UNCONFIRMED_TRUNCATES: &str = "unconfirmed-leader-truncates";

/// Creating a segment skips the directory fsync that makes its name durable.
pub const SKIP_SEGMENT_DIR_FSYNC: &str = "segment-create-skips-dir-fsync";
/// Creating the log directory does not fsync its parent, as before issue 12 (found by
/// the simulated disk: a power loss could take a new log, acknowledged commits and all).
pub const SKIP_LOG_DIR_PARENT_FSYNC: &str = "log-dir-parent-not-fsynced";
/// An appender checks whether the log is sealed once, before waiting for room, as before
/// issue 12 (the seal bypass).
pub const SEAL_BYPASS: &str = "seal-bypass";
/// Appending provisions from the segment after the one holding the end, as the
/// segment-boundary bug of issue 10 did.
pub const PROVISION_PAST_BOUNDARY: &str = "provision-past-boundary";
/// A flush leader publishes as durable everything appended when its flush ends, not what
/// was written before it began: records appended while the flush ran are acknowledged
/// without ever being flushed.
pub const FLUSH_CLAIMS_APPENDED: &str = "flush-claims-appended";

#[cfg(feature = "mutations")]
static ACTIVE: std::sync::Mutex<Option<Option<String>>> = std::sync::Mutex::new(None);

/// Whether mutation `name` is in force.
#[cfg(feature = "mutations")]
pub fn active(name: &str) -> bool {
    let mut a = crate::sync::lock(&ACTIVE);
    let a = a.get_or_insert_with(|| std::env::var("WALSHIP_MUTATION").ok());
    a.as_deref() == Some(name)
}

/// Whether mutation `name` is in force: never, without the `mutations` feature.
#[cfg(not(feature = "mutations"))]
#[inline(always)]
pub fn active(name: &str) -> bool {
    let _ = name;
    false
}

/// Puts mutation `name` in force (`None`: none), for this process.
#[cfg(feature = "mutations")]
pub fn set(name: Option<&str>) {
    *crate::sync::lock(&ACTIVE) = Some(name.map(str::to_owned));
}
