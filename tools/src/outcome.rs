//! How a subcommand ends, and the process exit code that says so.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success (for `verify`: the log is valid, possibly with a torn tail `open` repairs) |
//! | 1 | the log is corrupt: damage that `open` refuses, named by file and byte offset |
//! | 2 | anything else: bad arguments, unreadable files, not a log directory |
//!
//! Scripts can tell "the data is bad" from "the check could not run" by the code alone,
//! as with `fsck`'s distinct codes. clap's own usage errors also exit with 2.

use std::io;
use std::process::ExitCode;

/// Exit code for a corrupt log.
pub const EXIT_CORRUPT: u8 = 1;
/// Exit code for every other failure (usage, I/O).
pub const EXIT_ERROR: u8 = 2;

/// Why a subcommand did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// The command found the log corrupt and has already said where on standard output.
    FoundCorruption,
    /// The log is too damaged for the command to run at all; the message names the spot.
    Corrupt(String),
    /// Anything else: bad arguments, files that cannot be read or written.
    Error(String),
    /// Standard output was closed (piped into `head`, say): stop quietly.
    OutputClosed,
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::FoundCorruption | Failure::Corrupt(_) => ExitCode::from(EXIT_CORRUPT),
            Failure::Error(_) => ExitCode::from(EXIT_ERROR),
            // The reader went away on purpose; nothing failed.
            Failure::OutputClosed => ExitCode::SUCCESS,
        }
    }

    /// What to print on standard error, if anything.
    pub fn message(&self) -> Option<&str> {
        match self {
            Failure::Corrupt(m) | Failure::Error(m) => Some(m),
            Failure::FoundCorruption | Failure::OutputClosed => None,
        }
    }
}

impl From<walship_engine::Error> for Failure {
    fn from(e: walship_engine::Error) -> Failure {
        match e {
            walship_engine::Error::Corruption { .. } => Failure::Corrupt(e.to_string()),
            e => Failure::Error(e.to_string()),
        }
    }
}

/// For errors writing standard output; errors on files carry their path explicitly.
impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::OutputClosed
        } else {
            Failure::Error(format!("write output: {e}"))
        }
    }
}

/// How a program of the walship family ends: what it printed to `out` goes out first,
/// then `program: message` on standard error for a failure, and the exit code that tells
/// a script which kind of failure it was.
pub fn finish(program: &str, result: Result<(), Failure>, out: &mut impl io::Write) -> ExitCode {
    // What was printed goes out before any error message, so the two read in order.
    let flushed = out.flush().map_err(Failure::from);
    match result.and(flushed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(message) = failure.message() {
                eprintln!("{program}: {message}");
            }
            failure.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_and_errors_have_distinct_codes() {
        let corrupt: Failure = walship_engine::Error::Corruption {
            path: "/d/x.wal".into(),
            offset: 64,
            reason: "bad".into(),
        }
        .into();
        assert!(matches!(&corrupt, Failure::Corrupt(m) if m.contains("/d/x.wal at offset 64")));
        assert_eq!(corrupt.exit_code(), ExitCode::from(1));
        let io: Failure = io::Error::new(io::ErrorKind::PermissionDenied, "no").into();
        assert_eq!(io.exit_code(), ExitCode::from(2));
        let pipe: Failure = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(matches!(pipe, Failure::OutputClosed));
        assert_eq!(pipe.message(), None);
    }
}
