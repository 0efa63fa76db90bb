//! The commands through a real Redis client (the `redis` crate), RESP2 and RESP3, on a
//! one-node cluster.

mod common;

use common::{client, cmd, stop_all, Cluster};
use redis::Value;
use walship_engine::Durability;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_counters_expiry_and_scans_through_a_real_client() {
    let c = Cluster::new(1);
    let nodes = c.start_all(Durability::Local).await;
    let addr = nodes[0].resp_addr();
    client(addr, false, |con| {
        let q = |con: &mut redis::Connection, a: &[&str]| cmd(a).query::<Value>(con);
        let s =
            |con: &mut redis::Connection, a: &[&str]| cmd(a).query::<Option<String>>(con).unwrap();
        let i = |con: &mut redis::Connection, a: &[&str]| cmd(a).query::<i64>(con).unwrap();
        assert_eq!(s(con, &["PING"]).as_deref(), Some("PONG"));
        assert_eq!(s(con, &["SET", "k", "v"]).as_deref(), Some("OK"));
        assert_eq!(s(con, &["GET", "k"]).as_deref(), Some("v"));
        assert_eq!(s(con, &["SET", "k", "w", "NX"]), None);
        assert_eq!(
            s(con, &["SET", "k", "w", "XX", "GET"]).as_deref(),
            Some("v")
        );
        assert_eq!(i(con, &["APPEND", "k", "xyz"]), 4);
        assert_eq!(i(con, &["STRLEN", "k"]), 4);
        assert_eq!(i(con, &["INCR", "n"]), 1);
        assert_eq!(i(con, &["INCRBY", "n", "41"]), 42);
        assert_eq!(i(con, &["DECRBY", "n", "2"]), 40);
        assert_eq!(i(con, &["DECR", "n"]), 39);
        let e = q(con, &["INCR", "k"]).unwrap_err();
        assert_eq!(
            e.detail(),
            Some("value is not an integer or out of range"),
            "{e:?}"
        );
        assert_eq!(s(con, &["MSET", "a", "1", "b", "2"]).as_deref(), Some("OK"));
        let got: Vec<Option<String>> = cmd(&["MGET", "a", "b", "zz"]).query(con).unwrap();
        assert_eq!(got, vec![Some("1".into()), Some("2".into()), None]);
        assert_eq!(i(con, &["EXISTS", "a", "b", "zz", "a"]), 3);
        assert_eq!(s(con, &["GETDEL", "a"]).as_deref(), Some("1"));
        assert_eq!(i(con, &["DEL", "a", "b", "zz"]), 1);
        assert_eq!(
            s(con, &["SET", "t", "v", "EX", "100"]).as_deref(),
            Some("OK")
        );
        assert_eq!(i(con, &["TTL", "t"]), 100);
        assert!((99_000..=100_000).contains(&i(con, &["PTTL", "t"])));
        assert_eq!(i(con, &["PERSIST", "t"]), 1);
        assert_eq!(i(con, &["TTL", "t"]), -1);
        assert_eq!(i(con, &["EXPIRE", "t", "50"]), 1);
        assert_eq!(i(con, &["TTL", "nope"]), -2);
        assert_eq!(i(con, &["DBSIZE"]), 3);
        let mut keys: Vec<String> = cmd(&["KEYS", "*"]).query(con).unwrap();
        keys.sort();
        assert_eq!(keys, vec!["k", "n", "t"]);
        // SCAN to completion, as clients iterate it.
        let mut cursor = 0u64;
        let mut scanned = Vec::new();
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1)
                .query(con)
                .unwrap();
            scanned.extend(page);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        scanned.sort();
        assert_eq!(scanned, keys);
        // Errors, worded as Redis words them.
        let e = q(con, &["NOSUCH", "x"]).unwrap_err();
        assert!(e.to_string().contains("unknown command 'NOSUCH'"), "{e}");
        let e = q(con, &["GET"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("wrong number of arguments for 'get' command"),
            "{e}"
        );
        let e = q(con, &["SELECT", "1"]).unwrap_err();
        assert!(e.to_string().contains("DB index is out of range"), "{e}");
        assert_eq!(s(con, &["SELECT", "0"]).as_deref(), Some("OK"));
        // The connection's durability, and its last write's read token.
        assert_eq!(s(con, &["WALSHIP.DURABILITY"]).as_deref(), Some("local"));
        assert_eq!(
            s(con, &["WALSHIP.DURABILITY", "async"]).as_deref(),
            Some("OK")
        );
        assert_eq!(s(con, &["SET", "fast", "1"]).as_deref(), Some("OK"));
        let token = s(con, &["WALSHIP.TOKEN"]).expect("a token after a write");
        assert!(token.contains('@'), "{token}");
        assert_eq!(
            s(con, &["WALSHIP.WAITAPPLIED", &token, "1000"]).as_deref(),
            Some("OK")
        );
        let info = s(con, &["INFO", "replication"]).unwrap();
        assert!(info.contains("role:master\r\n"), "{info}");
        assert!(info.contains("master_repl_offset:"), "{info}");
        let info = s(con, &["INFO"]).unwrap();
        assert!(
            info.contains("# Keyspace\r\ndb0:keys=4,expires=1"),
            "{info}"
        );
        assert_eq!(i(con, &["CLIENT", "ID"]), i(con, &["CLIENT", "ID"]));
        assert_eq!(s(con, &["CLIENT", "SETNAME", "me"]).as_deref(), Some("OK"));
        assert_eq!(s(con, &["CLIENT", "GETNAME"]).as_deref(), Some("me"));
        assert!(i(con, &["COMMAND", "COUNT"]) > 30);
    })
    .await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_is_one_atomic_record_and_resp3_works() {
    let c = Cluster::new(1);
    let nodes = c.start_all(Durability::Local).await;
    let addr = nodes[0].resp_addr();
    let end_before = nodes[0].db().log().end_lsn();
    client(addr, true, |con| {
        // The redis crate's atomic pipeline is MULTI … EXEC.
        let (a, b, n): (i64, i64, Option<String>) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg("c")
            .cmd("INCRBY")
            .arg("c")
            .arg(10)
            .cmd("GET")
            .arg("c")
            .query(con)
            .unwrap();
        assert_eq!((a, b, n.as_deref()), (1, 11, Some("11")));
        // A refused command inside MULTI aborts the block.
        assert_eq!(cmd(&["MULTI"]).query::<String>(con).unwrap(), "OK");
        assert_eq!(
            cmd(&["SET", "x", "1"]).query::<String>(con).unwrap(),
            "QUEUED"
        );
        assert!(cmd(&["SET", "x"]).query::<Value>(con).is_err());
        let e = cmd(&["EXEC"]).query::<Value>(con).unwrap_err();
        assert_eq!(e.code(), Some("EXECABORT"), "{e:?}");
        assert_eq!(cmd(&["EXISTS", "x"]).query::<i64>(con).unwrap(), 0);
        let e = cmd(&["EXEC"]).query::<Value>(con).unwrap_err();
        assert!(e.to_string().contains("EXEC without MULTI"), "{e}");
        // RESP3: HELLO's map, and a null for a missing key.
        let hello = cmd(&["HELLO", "3"]).query::<Value>(con).unwrap();
        assert!(matches!(hello, Value::Map(_)), "{hello:?}");
        assert_eq!(
            cmd(&["GET", "missing"]).query::<Value>(con).unwrap(),
            Value::Nil
        );
    })
    .await;
    // Two commands in the block, one record in the log.
    let db = nodes[0].db();
    let mut reader = db.log().record_reader(end_before).unwrap();
    let mut records = 0;
    while reader.try_next().unwrap().is_some() {
        records += 1;
    }
    assert_eq!(records, 1, "the MULTI block is one record");
    stop_all(nodes).await;
}

/// A malformed or oversized frame ends that connection only, with nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_closes_only_its_connection_and_applies_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::new(1);
    let nodes = c.start_all(Durability::Local).await;
    let addr = nodes[0].resp_addr();
    let end = nodes[0].db().log().end_lsn();
    for bad in [
        &b"*1\r\n*1\r\n$3\r\nSET\r\n"[..],
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nkk\r\n",
        b"*99999999999\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A good request first, in the same write: it is answered, then the bad one
        // ends the connection.
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(common::WAIT, s.read_to_end(&mut got))
            .await
            .expect("the server closes the connection")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("+PONG\r\n-ERR Protocol error"), "{text:?}");
    }
    assert_eq!(nodes[0].db().log().end_lsn(), end, "nothing was written");
    assert!(nodes[0].db().is_empty());
    // Other connections are served as before.
    let pong = client(addr, false, |con| {
        cmd(&["PING"]).query::<String>(con).unwrap()
    })
    .await;
    assert_eq!(pong, "PONG");
    stop_all(nodes).await;
}

async fn ping(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"PING\r\n").await.unwrap();
    let mut b = [0u8; 64];
    let n = s.read(&mut b).await.unwrap();
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// One client more than `max_clients` is told so and closed; the others are served, and a
/// place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_beyond_the_limit_are_refused() {
    use tokio::io::AsyncReadExt;
    let c = Cluster::new(1);
    let node = c
        .start_with(
            "n1",
            walship_kv::server::Settings {
                max_clients: 2,
                ..c.settings(Durability::Local)
            },
        )
        .await;
    let addr = node.resp_addr();
    let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(ping(&mut a).await, "+PONG\r\n");
    assert_eq!(ping(&mut b).await, "+PONG\r\n");
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(common::WAIT, third.read_to_end(&mut got))
        .await
        .expect("the refused client is closed")
        .unwrap();
    assert_eq!(got, b"-ERR max number of clients reached\r\n");
    drop(a);
    common::eventually("the freed place is taken", || {
        std::net::TcpStream::connect(addr).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut r = [0u8; 64];
            s.write_all(b"PING\r\n").is_ok()
                && s.read(&mut r).is_ok_and(|n| &r[..n] == b"+PONG\r\n")
        })
    })
    .await;
    assert_eq!(ping(&mut b).await, "+PONG\r\n");
    stop_all(vec![node]).await;
}

/// A pipeline whose replies outgrow one batch (large values read many times) gets every
/// reply, in order, with the writes among them committed before their replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_larger_than_a_reply_batch_is_answered_in_order() {
    let c = Cluster::new(1);
    let nodes = c.start_all(Durability::Local).await;
    let addr = nodes[0].resp_addr();
    client(addr, false, |con| {
        let big = vec![b'v'; 300 << 10];
        let mut p = redis::pipe();
        p.cmd("SET").arg("big").arg(&big);
        for i in 0..20 {
            p.cmd("GET").arg("big");
            p.cmd("INCR").arg("n");
            if i == 10 {
                p.cmd("DEL").arg("big");
            }
        }
        let replies: Vec<Value> = p.query(con).unwrap();
        assert_eq!(replies.len(), 1 + 40 + 1);
        let mut at = 1;
        for i in 0..20 {
            let expected = if i <= 10 {
                Value::BulkString(big.clone())
            } else {
                Value::Nil
            };
            assert_eq!(replies[at], expected, "GET {i}");
            assert_eq!(replies[at + 1], Value::Int(i + 1), "INCR {i}");
            at += 2;
            if i == 10 {
                assert_eq!(replies[at], Value::Int(1));
                at += 1;
            }
        }
    })
    .await;
    stop_all(nodes).await;
}

async fn roundtrip(s: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request).await.unwrap();
    let mut b = vec![0u8; 4096];
    let n = s.read(&mut b).await.unwrap();
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// With a password, nothing but AUTH, HELLO and QUIT is served before the client
/// authenticates; a wrong password is refused; HELLO can authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_required_before_anything_else() {
    let c = Cluster::new(1);
    let node = c
        .start_with(
            "n1",
            walship_kv::server::Settings {
                password: Some("s3cret".into()),
                ..c.settings(Durability::Local)
            },
        )
        .await;
    node.node()
        .wait_for_role(
            |r| matches!(r, walship_transport::NodeRole::Leader { .. }),
            common::WAIT,
        )
        .await
        .unwrap();
    let addr = node.resp_addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        roundtrip(&mut s, b"SET k v\r\n").await,
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(
        roundtrip(&mut s, b"AUTH wrong\r\n").await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        roundtrip(&mut s, b"AUTH someone s3cret\r\n").await,
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        "only the default user exists"
    );
    assert!(roundtrip(&mut s, b"HELLO 3\r\n")
        .await
        .starts_with("-NOAUTH"));
    assert!(roundtrip(&mut s, b"GET k\r\n").await.starts_with("-NOAUTH"));
    assert!(node.db().is_empty(), "nothing ran");
    assert!(roundtrip(&mut s, b"HELLO 3 AUTH default s3cret\r\n")
        .await
        .starts_with('%'));
    assert_eq!(roundtrip(&mut s, b"SET k v\r\n").await, "+OK\r\n");
    let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut t, b"AUTH s3cret\r\n").await, "+OK\r\n");
    assert_eq!(roundtrip(&mut t, b"GET k\r\n").await, "$1\r\nv\r\n");
    stop_all(vec![node]).await;
}

/// A listener off loopback without a password is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listener_needs_a_password() {
    let c = Cluster::new(1);
    let started = walship_kv::instance::Instance::start(
        c.log("n1"),
        c.security("n1"),
        c.coordinator.clone(),
        c.node_options(),
        walship_kv::server::Settings {
            listen: "0.0.0.0:0".parse().unwrap(),
            ..c.settings(Durability::Local)
        },
        None,
    )
    .await;
    let Err(e) = started else {
        panic!("started without a password on 0.0.0.0");
    };
    assert!(e.to_string().contains("not a loopback address"), "{e}");
}

/// A request trickled in is closed once it has taken longer than `request_timeout`; an
/// idle connection is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_is_cut_off_and_an_idle_connection_is_not() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::new(1);
    let node = c
        .start_with(
            "n1",
            walship_kv::server::Settings {
                request_timeout: Duration::from_millis(300),
                ..c.settings(Durability::Local)
            },
        )
        .await;
    let addr = node.resp_addr();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // One byte every 50 ms: progress, but the request never completes in time.
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if slow.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut b = [0u8; 128];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut b)).await {
            let text = String::from_utf8_lossy(&b[..n]).into_owned();
            assert_eq!(
                text,
                "-ERR Protocol error: request not completed in time\r\n"
            );
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickled request was still open after 2 s");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(node.db().is_empty(), "nothing of it ran");
    // The idle connection waited longer than the timeout and is served.
    assert_eq!(ping(&mut idle).await, "+PONG\r\n");
    stop_all(vec![node]).await;
}
