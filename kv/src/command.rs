//! Requests as typed commands: arity, options and numbers checked, errors worded as Redis
//! words them, before anything runs.

use bytes::Bytes;
use walship_engine::Durability;
use walship_transport::ReadToken;

/// A command that reads or writes the key space: what `MULTI` queues and [`crate::exec`]
/// runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// `GET key`.
    Get(Bytes),
    /// `MGET key [key ...]`.
    Mget(Vec<Bytes>),
    /// `EXISTS key [key ...]`.
    Exists(Vec<Bytes>),
    /// `STRLEN key`.
    Strlen(Bytes),
    /// `TTL key` (seconds) or `PTTL key` (milliseconds).
    Ttl {
        /// The key.
        key: Bytes,
        /// Milliseconds rather than seconds.
        millis: bool,
    },
    /// `TYPE key`.
    Type(Bytes),
    /// `DBSIZE`.
    Dbsize,
    /// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
    Scan {
        /// Where to resume.
        cursor: u64,
        /// Keys must match.
        pattern: Option<Bytes>,
        /// About how many keys to visit.
        count: usize,
        /// Only keys of this type (all keys are strings here).
        kind: Option<Bytes>,
    },
    /// `KEYS pattern`.
    Keys(Bytes),
    /// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Only if the key does not (NX) or does (XX) exist.
        cond: Option<Cond>,
        /// Reply with the old value.
        get: bool,
        /// The expiry to set.
        expiry: SetExpiry,
    },
    /// `GETDEL key`.
    GetDel(Bytes),
    /// `DEL key [key ...]`.
    Del(Vec<Bytes>),
    /// `MSET key value [key value ...]`.
    Mset(Vec<(Bytes, Bytes)>),
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`: add `by`.
    IncrBy {
        /// The key.
        key: Bytes,
        /// The increment.
        by: i64,
    },
    /// `APPEND key value`.
    Append(Bytes, Bytes),
    /// `EXPIRE key seconds` / `PEXPIRE key ms`, with `NX|XX|GT|LT`.
    Expire {
        /// The key.
        key: Bytes,
        /// The timeout in milliseconds, relative to now (may be negative).
        ms: i64,
        /// The condition.
        cond: Option<ExpireCond>,
        /// The command's name for errors.
        name: &'static str,
    },
    /// `PERSIST key`.
    Persist(Bytes),
}

impl Data {
    /// Whether the command may change the key space (refused on a replica).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Data::Set { .. }
                | Data::GetDel(_)
                | Data::Del(_)
                | Data::Mset(_)
                | Data::IncrBy { .. }
                | Data::Append(..)
                | Data::Expire { .. }
                | Data::Persist(_)
        )
    }
}

/// `SET`'s existence condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Only if absent.
    Nx,
    /// Only if present.
    Xx,
}

/// `EXPIRE`'s condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCond {
    /// Only if the key has no expiry.
    Nx,
    /// Only if it has one.
    Xx,
    /// Only if the new expiry is later.
    Gt,
    /// Only if it is sooner.
    Lt,
}

/// `SET`'s expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetExpiry {
    /// No expiry: any old one is cleared.
    None,
    /// Keep the key's current expiry (`KEEPTTL`).
    Keep,
    /// In this many milliseconds (`EX`, `PX`).
    In(u64),
    /// At this Unix time in milliseconds (`EXAT`, `PXAT`).
    At(u64),
}

/// A command about the connection or the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
    Hello {
        /// The protocol asked for.
        proto: Option<i64>,
        /// Credentials.
        auth: Option<(Bytes, Bytes)>,
        /// The client's name.
        name: Option<Bytes>,
    },
    /// `AUTH [username] password`.
    Auth {
        /// The user (`default` if absent).
        user: Option<Bytes>,
        /// The password.
        password: Bytes,
    },
    /// `SELECT index`.
    Select(i64),
    /// `QUIT`.
    Quit,
    /// `CLIENT SETNAME name`.
    ClientSetName(Bytes),
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT ID`.
    ClientId,
    /// `CLIENT` subcommands answered with OK and no effect (`SETINFO`, what clients send
    /// on connecting).
    ClientNoop,
    /// `ACL WHOAMI`: the user this connection authenticated as.
    AclWhoami,
    /// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS …`, `COMMAND INFO …`.
    Command(Option<String>),
    /// `CONFIG GET parameter …`.
    ConfigGet(Vec<Bytes>),
    /// `INFO [section …]`.
    Info(Vec<String>),
    /// `ROLE`.
    Role,
    /// `BGSAVE [SCHEDULE]`: take a snapshot now, in the background.
    Bgsave,
    /// `LASTSAVE`: when the snapshot in place was taken.
    Lastsave,
    /// `MULTI`.
    Multi,
    /// `EXEC`.
    Exec,
    /// `DISCARD`.
    Discard,
    /// `WAIT numreplicas timeout`.
    Wait {
        /// Replicas needed.
        replicas: i64,
        /// Milliseconds; 0 waits forever.
        timeout_ms: u64,
    },
    /// `WALSHIP.DURABILITY [level]`: the connection's commit level.
    Durability(Option<Durability>),
    /// `WALSHIP.TOKEN`: the read token of the connection's last write.
    Token,
    /// `WALSHIP.WAITAPPLIED token timeout`: block until this node applied the write.
    WaitApplied {
        /// The write.
        token: ReadToken,
        /// Milliseconds; 0 waits forever.
        timeout_ms: u64,
    },
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// About the key space.
    Data(Data),
    /// About the connection or server.
    Conn(Conn),
}

/// Why a request is not a command: the error reply's text.
pub type Refusal = String;

fn arity(name: &str) -> Refusal {
    format!("ERR wrong number of arguments for '{name}' command")
}

const SYNTAX: &str = "ERR syntax error";
const NOT_INT: &str = "ERR value is not an integer or out of range";

/// An integer argument, as Redis's `string2ll` reads one: optional `-`, digits, no
/// spaces or `+`.
pub fn int(arg: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(arg).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn int_arg(arg: &[u8]) -> Result<i64, Refusal> {
    int(arg).ok_or_else(|| NOT_INT.to_owned())
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// The command name, lower-cased, for messages.
fn name_of(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

fn unknown(args: &[Bytes]) -> Refusal {
    // Redis: ERR unknown command 'foo', with args beginning with: 'a' 'b'
    let mut s = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0])
            .chars()
            .take(128)
            .collect::<String>()
    );
    for a in args.iter().skip(1).take(8) {
        s.push_str(&format!(
            "'{}' ",
            String::from_utf8_lossy(a)
                .chars()
                .take(128)
                .collect::<String>()
        ));
    }
    s
}

/// Parses one request (`args` is not empty).
///
/// # Errors
/// The error reply, worded as Redis words it.
///
/// ```
/// use walship_kv::command::{parse, Command, Data};
/// let args: Vec<bytes::Bytes> = ["get", "k"].iter().map(|s| bytes::Bytes::from(*s)).collect();
/// assert_eq!(parse(&args), Ok(Command::Data(Data::Get("k".into()))));
/// let bad: Vec<bytes::Bytes> = vec!["GET".into()];
/// assert_eq!(parse(&bad).unwrap_err(), "ERR wrong number of arguments for 'get' command");
/// ```
pub fn parse(args: &[Bytes]) -> Result<Command, Refusal> {
    let Some(first) = args.first() else {
        return Err(SYNTAX.into());
    };
    let name = name_of(first);
    let rest = &args[1..];
    let n = rest.len();
    let need = |ok: bool| if ok { Ok(()) } else { Err(arity(&name)) };
    let key1 = || -> Result<Bytes, Refusal> {
        need(n == 1)?;
        Ok(rest[0].clone())
    };
    use Command::{Conn as C, Data as D};
    Ok(match name.as_str() {
        "get" => D(Data::Get(key1()?)),
        "mget" => {
            need(n >= 1)?;
            D(Data::Mget(rest.to_vec()))
        }
        "exists" => {
            need(n >= 1)?;
            D(Data::Exists(rest.to_vec()))
        }
        "strlen" => D(Data::Strlen(key1()?)),
        "ttl" | "pttl" => D(Data::Ttl {
            key: key1()?,
            millis: name == "pttl",
        }),
        "type" => D(Data::Type(key1()?)),
        "dbsize" => {
            need(n == 0)?;
            D(Data::Dbsize)
        }
        "keys" => D(Data::Keys(key1()?)),
        "scan" => {
            need(n >= 1)?;
            let cursor = std::str::from_utf8(&rest[0])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("ERR invalid cursor")?;
            let (mut pattern, mut count, mut kind) = (None, 10usize, None);
            let mut i = 1;
            while i < n {
                let value = rest.get(i + 1).ok_or(SYNTAX)?;
                if is(&rest[i], "match") {
                    pattern = Some(value.clone());
                } else if is(&rest[i], "count") {
                    count = usize::try_from(int_arg(value)?)
                        .ok()
                        .filter(|&c| c >= 1)
                        .ok_or(SYNTAX)?;
                } else if is(&rest[i], "type") {
                    kind = Some(value.clone());
                } else {
                    return Err(SYNTAX.into());
                }
                i += 2;
            }
            D(Data::Scan {
                cursor,
                pattern,
                count,
                kind,
            })
        }
        "set" => parse_set(rest)?,
        "getdel" => D(Data::GetDel(key1()?)),
        "del" => {
            need(n >= 1)?;
            D(Data::Del(rest.to_vec()))
        }
        "mset" => {
            need(n >= 2 && n % 2 == 0)?;
            D(Data::Mset(
                rest.chunks_exact(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect(),
            ))
        }
        "incr" | "decr" => D(Data::IncrBy {
            key: key1()?,
            by: if name == "incr" { 1 } else { -1 },
        }),
        "incrby" | "decrby" => {
            need(n == 2)?;
            let by = int_arg(&rest[1])?;
            let by = if name == "decrby" {
                by.checked_neg().ok_or("ERR decrement would overflow")?
            } else {
                by
            };
            D(Data::IncrBy {
                key: rest[0].clone(),
                by,
            })
        }
        "append" => {
            need(n == 2)?;
            D(Data::Append(rest[0].clone(), rest[1].clone()))
        }
        "expire" | "pexpire" => {
            need(n == 2 || n == 3)?;
            let t = int_arg(&rest[1])?;
            let (ms, name) = if name == "expire" {
                (t.checked_mul(1000), "expire")
            } else {
                (Some(t), "pexpire")
            };
            let ms = ms.ok_or_else(|| format!("ERR invalid expire time in '{name}' command"))?;
            let cond = match rest.get(2) {
                None => None,
                Some(c) if is(c, "nx") => Some(ExpireCond::Nx),
                Some(c) if is(c, "xx") => Some(ExpireCond::Xx),
                Some(c) if is(c, "gt") => Some(ExpireCond::Gt),
                Some(c) if is(c, "lt") => Some(ExpireCond::Lt),
                Some(c) => {
                    return Err(format!(
                        "ERR Unsupported option {}",
                        String::from_utf8_lossy(c)
                    ))
                }
            };
            D(Data::Expire {
                key: rest[0].clone(),
                ms,
                cond,
                name,
            })
        }
        "persist" => D(Data::Persist(key1()?)),
        "ping" => {
            need(n <= 1)?;
            C(Conn::Ping(rest.first().cloned()))
        }
        "echo" => C(Conn::Echo(key1()?)),
        "hello" => parse_hello(rest)?,
        "auth" => match n {
            1 => C(Conn::Auth {
                user: None,
                password: rest[0].clone(),
            }),
            2 => C(Conn::Auth {
                user: Some(rest[0].clone()),
                password: rest[1].clone(),
            }),
            _ => return Err(arity(&name)),
        },
        "select" => {
            need(n == 1)?;
            C(Conn::Select(int_arg(&rest[0])?))
        }
        "quit" => C(Conn::Quit),
        "client" => {
            need(n >= 1)?;
            let sub = name_of(&rest[0]);
            match (sub.as_str(), n) {
                ("setname", 2) => C(Conn::ClientSetName(rest[1].clone())),
                ("getname", 1) => C(Conn::ClientGetName),
                ("id", 1) => C(Conn::ClientId),
                ("setinfo", 3) => C(Conn::ClientNoop),
                ("setname" | "getname" | "id" | "setinfo", _) => {
                    return Err(format!(
                        "ERR wrong number of arguments for 'client|{sub}' command"
                    ))
                }
                _ => {
                    return Err(format!(
                        "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                        String::from_utf8_lossy(&rest[0])
                    ))
                }
            }
        }
        "acl" => {
            need(n >= 1)?;
            match (name_of(&rest[0]).as_str(), n) {
                ("whoami", 1) => C(Conn::AclWhoami),
                ("whoami", _) => {
                    return Err("ERR wrong number of arguments for 'acl|whoami' command".into())
                }
                _ => {
                    return Err(format!(
                        "ERR unknown subcommand '{}'. Try ACL HELP.",
                        String::from_utf8_lossy(&rest[0])
                    ))
                }
            }
        }
        "command" => C(Conn::Command(rest.first().map(|s| name_of(s)))),
        "config" => {
            need(n >= 2 && is(&rest[0], "get"))?;
            C(Conn::ConfigGet(rest[1..].to_vec()))
        }
        "info" => C(Conn::Info(rest.iter().map(|s| name_of(s)).collect())),
        "role" => {
            need(n == 0)?;
            C(Conn::Role)
        }
        "bgsave" => {
            need(n == 0 || (n == 1 && is(&rest[0], "schedule")))?;
            C(Conn::Bgsave)
        }
        "lastsave" => {
            need(n == 0)?;
            C(Conn::Lastsave)
        }
        "multi" => {
            need(n == 0)?;
            C(Conn::Multi)
        }
        "exec" => {
            need(n == 0)?;
            C(Conn::Exec)
        }
        "discard" => {
            need(n == 0)?;
            C(Conn::Discard)
        }
        "wait" => {
            need(n == 2)?;
            let replicas = int_arg(&rest[0])?;
            let timeout = int_arg(&rest[1])?;
            let timeout_ms = u64::try_from(timeout).map_err(|_| "ERR timeout is negative")?;
            C(Conn::Wait {
                replicas,
                timeout_ms,
            })
        }
        "walship.durability" => {
            need(n <= 1)?;
            C(Conn::Durability(match rest.first() {
                None => None,
                Some(l) => Some(
                    std::str::from_utf8(l)
                        .ok()
                        .and_then(|s| s.parse::<Durability>().ok())
                        .ok_or("ERR durability must be one of async, local, remote-write, remote-flush, remote-apply")?,
                ),
            }))
        }
        "walship.token" => {
            need(n == 0)?;
            C(Conn::Token)
        }
        "walship.waitapplied" => {
            need(n == 2)?;
            let token = std::str::from_utf8(&rest[0])
                .map_err(|_| "ERR invalid token".to_owned())
                .and_then(|s| {
                    s.parse::<ReadToken>()
                        .map_err(|e| format!("ERR invalid token: {e}"))
                })?;
            let timeout_ms =
                u64::try_from(int_arg(&rest[1])?).map_err(|_| "ERR timeout is negative")?;
            C(Conn::WaitApplied { token, timeout_ms })
        }
        _ => return Err(unknown(args)),
    })
}

fn parse_set(rest: &[Bytes]) -> Result<Command, Refusal> {
    if rest.len() < 2 {
        return Err(arity("set"));
    }
    let (mut cond, mut get, mut expiry) = (None, false, SetExpiry::None);
    let invalid = || "ERR invalid expire time in 'set' command".to_owned();
    let mut i = 2;
    while i < rest.len() {
        let a = &rest[i];
        let timed = ["ex", "px", "exat", "pxat"].into_iter().find(|w| is(a, w));
        if is(a, "nx") && cond.is_none() {
            cond = Some(Cond::Nx);
        } else if is(a, "xx") && cond.is_none() {
            cond = Some(Cond::Xx);
        } else if is(a, "get") {
            get = true;
        } else if is(a, "keepttl") && expiry == SetExpiry::None {
            expiry = SetExpiry::Keep;
        } else if let (Some(w), SetExpiry::None) = (timed, expiry) {
            let v = rest.get(i + 1).ok_or(SYNTAX)?;
            let t = int_arg(v)?;
            let t = u64::try_from(t)
                .ok()
                .filter(|&t| t > 0)
                .ok_or_else(invalid)?;
            expiry = match w {
                "ex" => SetExpiry::In(t.checked_mul(1000).ok_or_else(invalid)?),
                "px" => SetExpiry::In(t),
                "exat" => SetExpiry::At(t.checked_mul(1000).ok_or_else(invalid)?),
                _ => SetExpiry::At(t),
            };
            i += 1;
        } else {
            return Err(SYNTAX.into());
        }
        i += 1;
    }
    Ok(Command::Data(Data::Set {
        key: rest[0].clone(),
        value: rest[1].clone(),
        cond,
        get,
        expiry,
    }))
}

fn parse_hello(rest: &[Bytes]) -> Result<Command, Refusal> {
    let mut proto = None;
    let (mut auth, mut name) = (None, None);
    let mut i = 0;
    if let Some(p) = rest.first() {
        proto = Some(int(p).ok_or("ERR Protocol version is not an integer or out of range")?);
        i = 1;
    }
    while i < rest.len() {
        if is(&rest[i], "auth") && i + 2 < rest.len() {
            auth = Some((rest[i + 1].clone(), rest[i + 2].clone()));
            i += 3;
        } else if is(&rest[i], "setname") && i + 1 < rest.len() {
            name = Some(rest[i + 1].clone());
            i += 2;
        } else {
            return Err(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&rest[i])
            ));
        }
    }
    Ok(Command::Conn(Conn::Hello { proto, auth, name }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, Refusal> {
        let args: Vec<Bytes> = s.split(' ').map(|a| Bytes::from(a.to_owned())).collect();
        parse(&args)
    }

    #[test]
    fn set_options_parse_and_conflicts_are_syntax_errors() {
        assert_eq!(
            p("SET k v NX GET PX 1500"),
            Ok(Command::Data(Data::Set {
                key: "k".into(),
                value: "v".into(),
                cond: Some(Cond::Nx),
                get: true,
                expiry: SetExpiry::In(1500),
            }))
        );
        assert_eq!(p("SET k v NX XX").unwrap_err(), SYNTAX);
        assert_eq!(p("SET k v EX 1 PX 2").unwrap_err(), SYNTAX);
        assert_eq!(p("SET k v KEEPTTL EX 2").unwrap_err(), SYNTAX);
        assert_eq!(p("SET k v EX").unwrap_err(), SYNTAX);
        assert_eq!(
            p("SET k v EX 0").unwrap_err(),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(p("SET k v EX x").unwrap_err(), NOT_INT);
        assert_eq!(
            p("SET k v EX 9223372036854775807").unwrap_err(),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            p("SET k").unwrap_err(),
            "ERR wrong number of arguments for 'set' command"
        );
    }

    #[test]
    fn integers_are_read_as_redis_reads_them() {
        for ok in ["0", "-1", "9223372036854775807", "-9223372036854775808"] {
            assert!(int(ok.as_bytes()).is_some(), "{ok}");
        }
        for bad in [
            "",
            "-",
            "+1",
            " 1",
            "01",
            "1.0",
            "9223372036854775808",
            "-0x1",
        ] {
            assert_eq!(int(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            p("DECRBY k -9223372036854775808").unwrap_err(),
            "ERR decrement would overflow"
        );
    }

    #[test]
    fn unknown_commands_and_subcommands_are_named() {
        assert_eq!(
            p("FOO a b").unwrap_err(),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        assert!(p("CLIENT KILL x")
            .unwrap_err()
            .starts_with("ERR unknown subcommand 'KILL'"));
        assert!(p("WALSHIP.DURABILITY fast")
            .unwrap_err()
            .contains("one of async"));
        assert!(matches!(
            p("WALSHIP.WAITAPPLIED 2@0/1F 100"),
            Ok(Command::Conn(Conn::WaitApplied {
                timeout_ms: 100,
                ..
            }))
        ));
        assert!(p("WALSHIP.WAITAPPLIED 0/1F 100")
            .unwrap_err()
            .starts_with("ERR invalid token"));
        assert_eq!(
            p("HELLO 3 AUTH u"),
            Err("ERR Syntax error in HELLO option 'AUTH'".into())
        );
    }
}
