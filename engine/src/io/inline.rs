//! The inline backend, for a log its caller drives ([`Drive::Manual`](crate::Drive)):
//! the storage's own write, on the calling thread. Named apart so a simulation can tell
//! which log it steps.

use super::Backend;

pub(crate) struct Inline;

impl Backend for Inline {
    fn name(&self) -> &'static str {
        "inline"
    }
}
