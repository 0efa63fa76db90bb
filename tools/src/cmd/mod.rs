//! The subcommands, one module each: its clap `Args` (whose doc comments are its
//! `--help`) and its `run`.

pub(crate) mod append;
pub(crate) mod certs;
pub(crate) mod demo;
pub(crate) mod dump;
pub(crate) mod inspect;
pub(crate) mod lag;
pub(crate) mod promote;
pub(crate) mod serve;
pub(crate) mod slot;
pub(crate) mod status;
pub(crate) mod verify;

use walship_engine::{Lsn, Record};
use walship_transport::{Apply, ApplyError};

/// The embedder of `serve` and `demo`: it keeps no state derived from the log, so it has
/// nothing to apply and nothing to undo when a failover truncates records it has seen
/// (a closure `Apply` refuses truncation, which would stop applying for good).
pub(crate) struct Stateless;

impl Apply for Stateless {
    fn apply(&mut self, _: &Record) -> Result<(), ApplyError> {
        Ok(())
    }

    fn truncated(&mut self, _: Lsn) -> Result<(), ApplyError> {
        Ok(())
    }
}

/// Parses an LSN argument: PostgreSQL's `HI/LO` hex form or a decimal byte position.
pub(crate) fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse()
        .map_err(|e: walship_engine::ParseError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stateless_embedder_accepts_a_truncation_and_applies_on() {
        let mut a = Stateless;
        let rec = Record {
            lsn: Lsn::new(200),
            epoch: walship_engine::Epoch::new(1),
            data: bytes::Bytes::from_static(b"x"),
        };
        assert!(a.apply(&rec).is_ok());
        assert!(a.truncated(Lsn::new(100)).is_ok());
        assert!(a.apply(&rec).is_ok());
        // What `serve` used before: a closure, whose `truncated` refuses.
        let mut closure = |_: &Record| {};
        assert!(Apply::truncated(&mut closure, Lsn::new(100)).is_err());
    }
}
