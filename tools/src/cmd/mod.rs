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
pub(crate) mod status;
pub(crate) mod verify;

use walship_engine::Lsn;

/// Parses an LSN argument: PostgreSQL's `HI/LO` hex form or a decimal byte position.
pub(crate) fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse()
        .map_err(|e: walship_engine::ParseError| e.to_string())
}
