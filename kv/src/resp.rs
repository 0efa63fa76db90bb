//! The wire: requests in, replies out, in RESP2 or RESP3 (`HELLO 3`).
//!
//! A request is an array of bulk strings (what every client sends) or an inline command
//! (a line of words, as typed into `telnet`). Before the bytes reach the RESP parser
//! (`redis-protocol`), [`frame_len`] walks the frame's headers and refuses, from the
//! headers alone, anything that is not a flat array of bulk strings or that breaks the
//! limits: nested arrays (which would recurse in the parser), more arguments than
//! [`Limits::max_args`], a bulk longer than [`Limits::max_bulk`], a request larger than
//! [`Limits::max_request`]. So nothing is buffered beyond the limits, and a frame is
//! parsed once, when whole. A refusal closes that connection, as Redis does with a
//! protocol error; nothing of the frame is run.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Resp2;
use redis_protocol::resp3::types::BytesFrame as Resp3;

/// Bounds on what one request may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most arguments in one request (Redis: 1024 × 1024... per array it accepts more;
    /// here, as many as one record may hold ops for).
    pub max_args: usize,
    /// Longest argument.
    pub max_bulk: usize,
    /// Largest whole request.
    pub max_request: usize,
    /// Longest inline command line (Redis: 64 KiB).
    pub max_inline: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: 1 << 20,
            max_bulk: 8 << 20,
            max_request: 16 << 20,
            max_inline: 64 << 10,
        }
    }
}

/// Why the bytes from a client are not a request: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn bad(what: impl Into<String>) -> ProtocolError {
    ProtocolError(what.into())
}

/// Reads a `\r\n`-terminated decimal at `at` (after the type byte); `Ok(None)` if the
/// line is not complete yet.
fn header(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, ProtocolError> {
    // A length line is at most a sign and 19 digits.
    let window = &buf[at..buf.len().min(at + 22)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() >= 22 {
            return Err(bad(format!("invalid {what} length")));
        }
        return Ok(None);
    };
    if at + cr + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[at + cr + 1] != b'\n' {
        return Err(bad(format!("invalid {what} length")));
    }
    let n = std::str::from_utf8(&window[..cr])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| bad(format!("invalid {what} length")))?;
    Ok(Some((n, at + cr + 2)))
}

/// The length of the multibulk request at the start of `buf` once it is all there;
/// `Ok(None)` while more bytes are needed. `buf[0]` must be `*`.
pub fn frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    let Some((n, mut at)) = header(buf, 1, "multibulk")? else {
        return Ok(None);
    };
    if n > limits.max_args as i64 {
        return Err(bad("invalid multibulk length"));
    }
    for _ in 0..n.max(0) {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(bad(format!(
                "expected '$', got '{}'",
                char::from(buf[at]).escape_default()
            )));
        }
        let Some((len, data)) = header(buf, at + 1, "bulk")? else {
            return Ok(None);
        };
        if len < 0 || len > limits.max_bulk as i64 {
            return Err(bad("invalid bulk length"));
        }
        // Bounded by max_bulk above: no overflow.
        at = data + len as usize + 2;
        if at > limits.max_request {
            return Err(bad("request too large"));
        }
        // The parser takes the two bytes after a bulk as its terminator unseen.
        if at <= buf.len() && &buf[at - 2..at] != b"\r\n" {
            return Err(bad("bulk not terminated by CRLF"));
        }
    }
    Ok((at <= buf.len()).then_some(at))
}

/// Takes the next whole request off `buf`: its arguments, or `Ok(None)` if incomplete.
///
/// # Errors
/// [`ProtocolError`] for a malformed or oversized request; the caller closes the
/// connection.
///
/// ```
/// use bytes::BytesMut;
/// use walship_kv::resp::{next_request, Limits};
/// let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n"[..]);
/// let l = Limits::default();
/// assert_eq!(next_request(&mut buf, &l)?.unwrap(), vec!["GET", "k"]);
/// assert_eq!(next_request(&mut buf, &l)?.unwrap(), vec!["PING"]); // inline
/// assert_eq!(next_request(&mut buf, &l)?, None);
/// # Ok::<(), walship_kv::resp::ProtocolError>(())
/// ```
pub fn next_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'*' {
            match inline(buf, limits)? {
                // An empty line is skipped, as Redis does.
                Some(args) if args.is_empty() => continue,
                other => return Ok(other),
            }
        }
        let Some(len) = frame_len(buf, limits)? else {
            if buf.len() > limits.max_request {
                return Err(bad("request too large"));
            }
            return Ok(None);
        };
        // `frame_len` walked only the headers; the maintained parser reads the frame once
        // it is whole and checked, into views of the same buffer (no copy).
        let mut frame = buf.split_to(len);
        let decoded = redis_protocol::resp2::decode::decode_bytes_mut(&mut frame)
            .map_err(|e| bad(e.to_string()))?;
        let Some((Resp2::Array(items), _, _)) = decoded else {
            return Err(bad("expected a multibulk request"));
        };
        let args = items
            .into_iter()
            .map(|f| match f {
                Resp2::BulkString(b) => Ok(b),
                _ => Err(bad("expected '$'")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // `*0` (or `*-1`) is no command: read on.
        if !args.is_empty() {
            return Ok(Some(args));
        }
    }
}

/// An inline command: one line, split on spaces and tabs.
fn inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf
        .iter()
        .take(limits.max_inline + 1)
        .position(|&b| b == b'\n')
    else {
        if buf.len() > limits.max_inline {
            return Err(bad("too big inline request"));
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1).freeze();
    let body = line.slice(
        ..line
            .strip_suffix(b"\r\n")
            .or(line.strip_suffix(b"\n"))
            .map_or(0, <[u8]>::len),
    );
    let mut args = Vec::new();
    let mut start = None;
    for (i, &b) in body.iter().enumerate() {
        let space = b == b' ' || b == b'\t';
        match (space, start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                args.push(body.slice(s..i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        args.push(body.slice(s..));
    }
    if args.len() > limits.max_args {
        return Err(bad("invalid multibulk length"));
    }
    Ok(Some(args))
}

/// A reply, encoded for the connection's protocol by [`Reply::encode`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK` and the like.
    Status(String),
    /// `-ERR …`: the text includes the error code word.
    Error(String),
    /// `:1`.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// The null bulk string (RESP3: null).
    Nil,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP2: a flat array of keys and values).
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    /// An error reply; `text` starts with its code (`ERR`, `WRONGTYPE`, `READONLY`…).
    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    /// A bulk string from text.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(s.into()))
    }

    /// About how many bytes the reply takes encoded (its payloads; headers are a few
    /// bytes each).
    pub fn approx_len(&self) -> usize {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.len() + 3,
            Reply::Int(_) | Reply::Nil => 8,
            Reply::Bulk(b) => b.len() + 16,
            Reply::Array(items) => 8 + items.iter().map(Reply::approx_len).sum::<usize>(),
            Reply::Map(pairs) => {
                8 + pairs
                    .iter()
                    .map(|(k, v)| k.approx_len() + v.approx_len())
                    .sum::<usize>()
            }
        }
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply, encoded as RESP3 if `resp3`, else RESP2, to `out`.
    pub fn encode(&self, resp3: bool, out: &mut BytesMut) {
        // Encoding a frame we built cannot fail: the buffer is extended to fit.
        let _ = if resp3 {
            redis_protocol::resp3::encode::complete::extend_encode(out, &self.resp3(), false)
        } else {
            redis_protocol::resp2::encode::extend_encode(out, &self.resp2(), false)
        };
    }

    fn resp2(&self) -> Resp2 {
        match self {
            Reply::Status(s) => Resp2::SimpleString(Bytes::from(s.clone())),
            Reply::Error(s) => Resp2::Error(s.as_str().into()),
            Reply::Int(i) => Resp2::Integer(*i),
            Reply::Bulk(b) => Resp2::BulkString(b.clone()),
            Reply::Nil => Resp2::Null,
            Reply::Array(items) => Resp2::Array(items.iter().map(Reply::resp2).collect()),
            Reply::Map(pairs) => Resp2::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.resp2(), v.resp2()])
                    .collect(),
            ),
        }
    }

    fn resp3(&self) -> Resp3 {
        match self {
            Reply::Status(s) => Resp3::SimpleString {
                data: Bytes::from(s.clone()),
                attributes: None,
            },
            Reply::Error(s) => Resp3::SimpleError {
                data: s.as_str().into(),
                attributes: None,
            },
            Reply::Int(i) => Resp3::Number {
                data: *i,
                attributes: None,
            },
            Reply::Bulk(b) => Resp3::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Reply::Nil => Resp3::Null,
            Reply::Array(items) => Resp3::Array {
                data: items.iter().map(Reply::resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Resp3::Map {
                data: pairs.iter().map(|(k, v)| (k.resp3(), v.resp3())).collect(),
                attributes: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    proptest! {
        /// Requests split at any point come out whole and equal, one by one.
        #[test]
        fn requests_survive_any_split(reqs in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..5), 1..4), cut in any::<prop::sample::Index>()) {
            let wire: Vec<u8> = reqs.iter().flat_map(|r| encode_request(r)).collect();
            let n = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..n]);
            let mut got = Vec::new();
            let l = Limits::default();
            while let Some(r) = next_request(&mut buf, &l).unwrap() { got.push(r); }
            buf.extend_from_slice(&wire[n..]);
            while let Some(r) = next_request(&mut buf, &l).unwrap() { got.push(r); }
            let want: Vec<Vec<Bytes>> = reqs.iter().map(|r| r.iter().map(|a| Bytes::from(a.clone())).collect()).collect();
            prop_assert_eq!(got, want);
            prop_assert!(buf.is_empty());
        }

        /// Arbitrary bytes: requests, an error or a wait, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&data[..]);
            let l = Limits { max_args: 8, max_bulk: 64, max_request: 256, max_inline: 64 };
            while let Ok(Some(_)) = next_request(&mut buf, &l) {}
        }
    }

    #[test]
    fn hostile_headers_are_refused_before_buffering() {
        let l = Limits::default();
        let refuse = |wire: &[u8]| next_request(&mut BytesMut::from(wire), &l).unwrap_err().0;
        // Nesting would recurse in the parser: refused at the first nested header.
        assert_eq!(refuse(&b"*1\r\n*1\r\n*1\r\n"[..]), "expected '$', got '*'");
        assert_eq!(refuse(&b"*99999999999\r\n"[..]), "invalid multibulk length");
        assert_eq!(refuse(&b"*1\r\n$999999999\r\n"[..]), "invalid bulk length");
        assert_eq!(refuse(&b"*1\r\n$-5\r\n"[..]), "invalid bulk length");
        assert_eq!(refuse(&b"*x\r\n"[..]), "invalid multibulk length");
        assert_eq!(
            refuse(&b"*1\r\n$1\r\nab\r\n"[..]),
            "bulk not terminated by CRLF"
        );
        // Many bulks each within limits, summing past the request limit.
        let small = Limits {
            max_request: 100,
            ..l
        };
        let mut wire = b"*20\r\n".to_vec();
        for _ in 0..20 {
            wire.extend_from_slice(b"$10\r\n0123456789\r\n");
        }
        let e = next_request(&mut BytesMut::from(&wire[..]), &small).unwrap_err();
        assert_eq!(e.0, "request too large");
        // An endless inline line.
        let e = next_request(&mut BytesMut::from(&vec![b'a'; 70_000][..]), &l).unwrap_err();
        assert_eq!(e.0, "too big inline request");
    }

    #[test]
    fn inline_commands_split_on_blanks() {
        let mut buf = BytesMut::from(&b"\r\nSET  k\tv\r\n"[..]);
        let r = next_request(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(r, vec!["SET", "k", "v"]);
    }

    #[test]
    fn replies_encode_per_protocol() {
        let map = Reply::Map(vec![(Reply::text("proto"), Reply::Int(3))]);
        let mut b = BytesMut::new();
        map.encode(false, &mut b);
        assert_eq!(&b[..], b"*2\r\n$5\r\nproto\r\n:3\r\n");
        b.clear();
        map.encode(true, &mut b);
        assert_eq!(&b[..], b"%1\r\n$5\r\nproto\r\n:3\r\n");
        b.clear();
        Reply::Nil.encode(false, &mut b);
        Reply::Nil.encode(true, &mut b);
        Reply::error("ERR x").encode(false, &mut b);
        assert_eq!(&b[..], b"$-1\r\n_\r\n-ERR x\r\n");
    }
}
