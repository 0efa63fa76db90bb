//! One client connection: requests in order, replies in order, writes replied to only
//! once committed at the connection's durability.
//!
//! Pipelined requests are run as they arrive; the replies of one read's worth of
//! requests go out together, after one wait for the commit of the batch's last write
//! (commits are watermarks: the last one covers the others). If that wait fails, every
//! write of the batch gets the error, since none of them can be said to be committed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use walship_engine::{Durability, Lsn};
use walship_transport::{Node, NodeRole};

use crate::command::{parse, Command, Conn as C, Data};
use crate::db::{now_ms, Db, WriteError};
use crate::info;
use crate::resp::{next_request, Reply};
use crate::server::Settings;

/// What connections share: the database, the node, the settings, the counters.
pub(crate) struct Shared {
    pub(crate) db: Arc<Db>,
    pub(crate) node: Arc<Node>,
    pub(crate) settings: Settings,
    pub(crate) started: std::time::Instant,
    /// The same, seconds since the Unix epoch (`LASTSAVE` before any snapshot).
    pub(crate) started_unix: u64,
    pub(crate) next_id: AtomicU64,
    pub(crate) connected: AtomicU64,
    pub(crate) commands: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) local_addr: std::net::SocketAddr,
}

/// Replies held for one connection before they are written out, about.
const BATCH_REPLY_BYTES: usize = 1 << 20;

/// A reply waiting to be sent: how to encode it, and the write it waits for.
struct Pending {
    reply: Reply,
    resp3: bool,
    write: Option<Lsn>,
}

/// One connection's state.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    id: u64,
    name: Option<Bytes>,
    resp3: bool,
    durability: Durability,
    /// Inside `MULTI`: the queued commands, and whether one was refused.
    multi: Option<(Vec<Data>, bool)>,
    last_write: Option<Lsn>,
    /// Who authenticated, once someone did.
    user: Option<Login>,
    quit: bool,
}

/// The user a connection authenticated as.
#[derive(Debug, Clone)]
struct Login {
    name: String,
    commands: crate::server::Commands,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>) -> Connection {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        // No password and no users: everyone is `default`, as a Redis without `requirepass`.
        let open = shared.settings.password.is_none() && shared.settings.users.is_empty();
        let user = open.then(|| Login {
            name: "default".into(),
            commands: crate::server::Commands::All,
        });
        Connection {
            durability: shared.settings.durability,
            shared,
            id,
            name: None,
            resp3: false,
            multi: None,
            last_write: None,
            user,
            quit: false,
        }
    }

    /// Serves the connection until the client leaves, sends bytes that are not a
    /// request (answered with the protocol error first), or `stop` is set.
    pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut stream: S,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut buf = BytesMut::with_capacity(16 << 10);
        let mut out = BytesMut::with_capacity(16 << 10);
        let limits = self.shared.settings.limits;
        // When the request now in `buf` began arriving, if one is incomplete: it must be
        // whole within `request_timeout`, so a client trickling bytes cannot hold a
        // connection's buffer indefinitely. An idle connection (nothing pending) may wait
        // as long as it likes, as in Redis.
        let mut partial_since: Option<tokio::time::Instant> = None;
        let request_timeout = self.shared.settings.request_timeout;
        while !self.quit {
            let too_slow = async {
                match partial_since {
                    Some(t) => tokio::time::sleep_until(t + request_timeout).await,
                    None => std::future::pending().await,
                }
            };
            let n = tokio::select! {
                r = stream.read_buf(&mut buf) => r,
                _ = stop.changed() => break,
                _ = too_slow => {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        stream.write_all(b"-ERR Protocol error: request not completed in time\r\n"),
                    )
                    .await;
                    break;
                }
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let mut completed = false;
            let mut batch = Vec::new();
            let mut held = 0usize;
            let mut broken = None;
            let mut gone = false;
            while !self.quit {
                match next_request(&mut buf, &limits) {
                    Ok(Some(args)) => {
                        completed = true;
                        self.shared.commands.fetch_add(1, Ordering::Relaxed);
                        let p = self.handle(&args).await;
                        held += p.reply.approx_len();
                        batch.push(p);
                        // A client pipelining reads of large values gets them in parts,
                        // each written before more is read: what is held stays bounded
                        // by the socket's back-pressure.
                        if held >= BATCH_REPLY_BYTES {
                            gone = self.reply(&mut batch, None, &mut out, &mut stream).await;
                            held = 0;
                            if gone {
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            if gone
                || self
                    .reply(&mut batch, broken.as_ref(), &mut out, &mut stream)
                    .await
            {
                break;
            }
            if broken.is_some() {
                break;
            }
            // What is left in `buf` is one incomplete request: begun now if a request
            // completed in this read, else still the one that was pending.
            partial_since = match (buf.is_empty(), partial_since) {
                (true, _) => None,
                (false, Some(t)) if !completed => Some(t),
                (false, _) => Some(tokio::time::Instant::now()),
            };
        }
        let _ = stream.shutdown().await;
    }

    /// Sends the batch's replies once its writes committed, then the protocol error that
    /// ends the connection, if any. Whether the client is gone.
    async fn reply<S: AsyncWrite + Unpin>(
        &self,
        batch: &mut Vec<Pending>,
        broken: Option<&crate::resp::ProtocolError>,
        out: &mut BytesMut,
        stream: &mut S,
    ) -> bool {
        self.settle(batch).await;
        for p in batch.drain(..) {
            p.reply.encode(p.resp3, out);
        }
        if let Some(e) = broken {
            Reply::error(format!("ERR {e}")).encode(self.resp3, out);
        }
        let gone = stream.write_all(out).await.is_err();
        out.clear();
        gone
    }

    /// Waits for the batch's writes to commit at the connection's durability.
    async fn settle(&self, batch: &mut [Pending]) {
        let Some(last) = batch.iter().filter_map(|p| p.write).max() else {
            return;
        };
        let level = self.durability;
        let commit = self.shared.node.commit(last, level);
        let result = if level == Durability::Async {
            Ok(())
        } else {
            match tokio::time::timeout(self.shared.settings.commit_timeout, commit).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "timed out after {:?} waiting for {level} durability of {last}",
                    self.shared.settings.commit_timeout
                )),
            }
        };
        if let Err(e) = result {
            for p in batch.iter_mut().filter(|p| p.write.is_some()) {
                p.reply = Reply::error(format!("ERR {e}"));
            }
        }
    }

    fn now(&self, reply: Reply) -> Pending {
        Pending {
            reply,
            resp3: self.resp3,
            write: None,
        }
    }

    async fn handle(&mut self, args: &[Bytes]) -> Pending {
        let cmd = match parse(args) {
            Ok(c) => c,
            Err(e) => {
                if let Some((_, failed)) = &mut self.multi {
                    *failed = true;
                }
                return self.now(Reply::error(e));
            }
        };
        if self.user.is_none()
            && !matches!(
                cmd,
                Command::Conn(C::Auth { .. } | C::Hello { .. } | C::Quit)
            )
        {
            return self.now(Reply::error("NOAUTH Authentication required."));
        }
        if let (Command::Data(d), Some(u)) = (&cmd, &self.user) {
            if d.is_write() && u.commands == crate::server::Commands::Read {
                if let Some((_, failed)) = &mut self.multi {
                    *failed = true;
                }
                let name = args
                    .first()
                    .map_or(String::new(), |a| String::from_utf8_lossy(a).to_lowercase());
                return self.now(Reply::error(format!(
                    "NOPERM User {} has no permissions to run the '{name}' command",
                    u.name
                )));
            }
        }
        match cmd {
            Command::Data(d) => {
                if let Some((queue, _)) = &mut self.multi {
                    queue.push(d);
                    return self.now(Reply::Status("QUEUED".into()));
                }
                self.data(vec![d], false)
            }
            Command::Conn(c) => self.conn(c).await,
        }
    }

    /// Runs data commands: one, or a `MULTI` block (`block`: the replies go in one
    /// array, the effects in one record).
    fn data(&mut self, cmds: Vec<Data>, block: bool) -> Pending {
        let now = now_ms();
        let writes = cmds.iter().any(Data::is_write);
        if !writes {
            let store = self.shared.db.read();
            let mut tx = crate::exec::Tx::new(&store, now);
            let mut replies: Vec<Reply> = cmds.iter().map(|c| tx.run(c)).collect();
            return self.now(if block {
                Reply::Array(replies)
            } else {
                replies.remove(0)
            });
        }
        match self
            .shared
            .db
            .write(now, |tx| cmds.iter().map(|c| tx.run(c)).collect::<Vec<_>>())
        {
            Ok((mut replies, lsn)) => {
                if lsn.is_some() {
                    self.last_write = lsn;
                }
                let reply = if block {
                    Reply::Array(replies)
                } else {
                    replies.remove(0)
                };
                Pending {
                    reply,
                    resp3: self.resp3,
                    write: lsn,
                }
            }
            Err(WriteError::ReadOnly) => self.now(Reply::error(self.readonly())),
            Err(e) => self.now(Reply::error(e.to_string())),
        }
    }

    /// `-READONLY`, naming the leader.
    fn readonly(&self) -> String {
        let base = WriteError::ReadOnly.to_string();
        match self.shared.node.role() {
            NodeRole::Follower { leader, .. } => format!("{base} The leader is {leader}."),
            _ => format!("{base} No leader is confirmed yet."),
        }
    }

    async fn conn(&mut self, c: C) -> Pending {
        if self.multi.is_some() {
            match c {
                C::Exec | C::Discard | C::Multi => {}
                _ => {
                    if let Some((_, failed)) = &mut self.multi {
                        *failed = true;
                    }
                    return self.now(Reply::error("ERR Command not allowed inside a transaction"));
                }
            }
        }
        let reply = match c {
            C::Ping(None) => Reply::Status("PONG".into()),
            C::Ping(Some(m)) | C::Echo(m) => Reply::Bulk(m),
            C::Quit => {
                self.quit = true;
                Reply::ok()
            }
            C::Select(0) => Reply::ok(),
            C::Select(_) => Reply::error("ERR DB index is out of range"),
            C::Auth { user, password } => self.auth(user, &password),
            C::Hello { proto, auth, name } => {
                if let Some(p) = proto {
                    if p != 2 && p != 3 {
                        return self.now(Reply::error("NOPROTO unsupported protocol version"));
                    }
                }
                if let Some((user, password)) = auth {
                    let r = self.auth(Some(user), &password);
                    if r.is_error() {
                        return self.now(r);
                    }
                }
                if self.user.is_none() {
                    return self.now(Reply::error(
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                    ));
                }
                if let Some(p) = proto {
                    self.resp3 = p == 3;
                }
                if name.is_some() {
                    self.name = name;
                }
                let role = if matches!(self.shared.node.role(), NodeRole::Leader { .. }) {
                    "master"
                } else {
                    "replica"
                };
                Reply::Map(vec![
                    (Reply::text("server"), Reply::text("redis")),
                    (Reply::text("version"), Reply::text(info::REDIS_VERSION)),
                    (
                        Reply::text("proto"),
                        Reply::Int(if self.resp3 { 3 } else { 2 }),
                    ),
                    (Reply::text("id"), Reply::Int(self.id as i64)),
                    (Reply::text("mode"), Reply::text("standalone")),
                    (Reply::text("role"), Reply::text(role)),
                    (Reply::text("modules"), Reply::Array(Vec::new())),
                ])
            }
            C::ClientSetName(n) => {
                if n.iter().any(|&b| !(0x21..=0x7e).contains(&b)) {
                    Reply::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    )
                } else {
                    self.name = (!n.is_empty()).then_some(n);
                    Reply::ok()
                }
            }
            C::ClientGetName => self.name.clone().map_or(Reply::Nil, Reply::Bulk),
            C::ClientId => Reply::Int(self.id as i64),
            C::ClientNoop => Reply::ok(),
            C::AclWhoami => match &self.user {
                Some(u) => Reply::Bulk(Bytes::from(u.name.clone())),
                None => Reply::error("NOAUTH Authentication required."),
            },
            C::Command(sub) => info::command(sub.as_deref()),
            C::ConfigGet(params) => info::config_get(&self.shared, &params),
            C::Info(sections) => Reply::Bulk(Bytes::from(info::info(&self.shared, &sections))),
            C::Role => info::role(&self.shared),
            C::Bgsave => {
                let db = &self.shared.db;
                if db.snapshot_dir().is_none() {
                    Reply::error("ERR this node takes no snapshots (it has no snapshot directory)")
                } else if db.snapshot_status().in_progress {
                    // BGSAVE SCHEDULE's answer too: the one running covers the request.
                    Reply::Status("Background saving scheduled".into())
                } else {
                    db.request_snapshot();
                    Reply::Status("Background saving started".into())
                }
            }
            C::Lastsave => {
                let at = self.shared.db.snapshot_status().saved_at;
                // As Redis, which answers its start time before its first save.
                let at = if at == 0 {
                    self.shared.started_unix
                } else {
                    at
                };
                Reply::Int(i64::try_from(at).unwrap_or(i64::MAX))
            }
            C::Multi => {
                if self.multi.is_some() {
                    Reply::error("ERR MULTI calls can not be nested")
                } else {
                    self.multi = Some((Vec::new(), false));
                    Reply::ok()
                }
            }
            C::Discard => match self.multi.take() {
                Some(_) => Reply::ok(),
                None => Reply::error("ERR DISCARD without MULTI"),
            },
            C::Exec => match self.multi.take() {
                None => Reply::error("ERR EXEC without MULTI"),
                Some((_, true)) => {
                    Reply::error("EXECABORT Transaction discarded because of previous errors.")
                }
                Some((queue, false)) if queue.is_empty() => Reply::Array(Vec::new()),
                Some((queue, false)) => return self.data(queue, true),
            },
            C::Wait {
                replicas,
                timeout_ms,
            } => self.wait(replicas, timeout_ms).await,
            C::Durability(None) => Reply::text(self.durability.as_str()),
            C::Durability(Some(level)) => {
                self.durability = level;
                Reply::ok()
            }
            C::Token => match self.last_write.and_then(|l| self.shared.node.read_token(l)) {
                Some(t) => Reply::text(t.to_string()),
                None => Reply::Nil,
            },
            C::WaitApplied { token, timeout_ms } => {
                match self.shared.node.wait_for_token(token, forever_if_zero(timeout_ms)).await {
                    Ok(()) => Reply::ok(),
                    Err(_) => Reply::error(format!(
                        "TIMEOUT the write {token} was not applied on this node within {timeout_ms} ms"
                    )),
                }
            }
        };
        self.now(reply)
    }

    fn auth(&mut self, user: Option<Bytes>, password: &[u8]) -> Reply {
        let settings = &self.shared.settings;
        let name = user.as_deref().unwrap_or(b"default");
        if name == b"default" && settings.password.is_none() && settings.users.is_empty() {
            return Reply::error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
        }
        // Compared in time independent of where the bytes differ.
        let same = |expected: &str| {
            expected.len() == password.len()
                && expected
                    .bytes()
                    .zip(password)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        };
        let login = if name == b"default" {
            settings
                .password
                .as_deref()
                .filter(|p| same(p))
                .map(|_| Login {
                    name: "default".into(),
                    commands: crate::server::Commands::All,
                })
        } else {
            settings
                .users
                .iter()
                .find(|u| u.name.as_bytes() == name)
                .filter(|u| same(&u.password))
                .map(|u| Login {
                    name: u.name.clone(),
                    commands: u.commands,
                })
        };
        match login {
            Some(l) => {
                self.user = Some(l);
                Reply::ok()
            }
            None => Reply::error("WRONGPASS invalid username-password pair or user is disabled."),
        }
    }

    /// `WAIT numreplicas timeout`: how many followers have flushed this connection's
    /// last write, once `replicas` have or the timeout passed.
    async fn wait(&self, replicas: i64, timeout_ms: u64) -> Reply {
        if !matches!(self.shared.node.role(), NodeRole::Leader { .. }) {
            return Reply::error("ERR WAIT cannot be used with replica instances.");
        }
        let target = self.last_write.unwrap_or(Lsn::ZERO);
        let want = usize::try_from(replicas.max(0)).unwrap_or(usize::MAX);
        match self
            .shared
            .node
            .wait_for_flushed(target, want, forever_if_zero(timeout_ms))
            .await
        {
            Some(have) => Reply::Int(i64::try_from(have).unwrap_or(i64::MAX)),
            None => Reply::error("ERR WAIT cannot be used with replica instances."),
        }
    }
}

/// Redis's timeout 0 means no timeout.
fn forever_if_zero(ms: u64) -> Duration {
    if ms == 0 {
        Duration::from_secs(365 * 86_400)
    } else {
        Duration::from_millis(ms)
    }
}
