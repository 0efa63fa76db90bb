//! Issue 11, "bounded everything", against a real `walship serve`: what a client of the
//! admin endpoint can make the process hold is bounded. Before: 500 idle connections took
//! 500 descriptors (the log's own files then failed with "Too many open files"), a
//! half-sent request was kept forever, and 60 concurrent 15 MiB bodies were buffered in
//! full.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{certs, config, free_tcp, free_udp, ok, status_until, tls, Served};

/// Descriptors the process holds.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Resident memory of the process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One node that leads alone, with 64 MiB segments (records up to 8 MiB).
fn one_node(dir: &Path) -> (Served, String) {
    certs(dir, "limits", "n1");
    let (listen, admin) = (free_udp(), free_tcp());
    let path = config(
        dir,
        "n1",
        &listen,
        &admin,
        &format!("n1 = \"{listen}\""),
        "ANY 1 (*)",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("segment_bytes = 1048576", "segment_bytes = 67108864");
    std::fs::write(&path, text).unwrap();
    let served = Served::start(&path, &admin);
    // The admin endpoint answers before the node's loop has made it leader.
    status_until(&admin, "n1 leads", |v| v["role"] == "leader");
    (served, admin)
}

/// The status line of the answer to `request` sent on a new connection, as operator.
fn status_of(dir: &Path, admin: &str, request: &[u8]) -> String {
    let mut s = tls(admin, &dir.join("certs"), "op");
    s.write_all(request).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn append_local(admin: &str, what: &str) {
    let started = Instant::now();
    let out = ok(&["append", admin, "--durability", "local", what]);
    assert!(out.contains("local"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{what}: took {:?}",
        started.elapsed()
    );
}

#[test]
fn idle_and_half_sent_connections_are_bounded_and_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, admin) = one_node(tmp.path());
    let pid = served.pid();
    append_local(&admin, "before");
    let before = fds(pid);

    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&admin).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = fds(pid);
    assert!(
        during <= before + walship_tools::admin::MAX_CONNECTIONS + 4,
        "300 idle connections took {} descriptors (before: {before})",
        during - before
    );
    drop(idle);
    append_local(&admin, "after the idle ones left");

    // A connection that never starts its TLS handshake is dropped after the timeout too.
    let mut mute = TcpStream::connect(&admin).unwrap();
    mute.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut one = [0u8; 1];
    assert!(matches!(mute.read(&mut one), Ok(0) | Err(_)));
    let waited = started.elapsed();
    assert!(
        waited < walship_tools::admin::HEADER_TIMEOUT + Duration::from_secs(5),
        "a mute connection was kept {waited:?}"
    );

    // A request whose headers never finish is dropped after the header timeout.
    let mut slow = tls(&admin, &tmp.path().join("certs"), "op");
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    // hyper closes it (a 408 may come first); TLS may report the close as an error.
    let closed = match slow.read(&mut buf) {
        Ok(_) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
    };
    assert!(closed, "the half-sent request stays open");
    let waited = started.elapsed();
    assert!(
        waited >= walship_tools::admin::HEADER_TIMEOUT - Duration::from_millis(500)
            && waited < walship_tools::admin::HEADER_TIMEOUT + Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    let (clean, _) = served.stop();
    assert!(clean);
}

#[test]
fn bodies_are_refused_before_they_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (served, admin) = one_node(tmp.path());
    let pid = served.pid();
    append_local(&admin, "before");
    let rss_before = rss_kib(pid);

    // Over the record limit (8 MiB here): refused from the headers alone, many at once.
    let big =
        "POST /append?durability=local HTTP/1.1\r\nHost: x\r\nContent-Length: 15728640\r\n\r\n";
    let answers: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..60)
            .map(|_| s.spawn(|| status_of(tmp.path(), &admin, big.as_bytes())))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for a in &answers {
        assert!(a.contains(" 413 "), "{a}");
    }
    // No length, no body.
    let chunked = "POST /append HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert!(status_of(tmp.path(), &admin, chunked.as_bytes()).contains(" 411 "));

    // Within the limit but beyond the budget of bodies held at once: the first eight
    // reserve 8 MB each and send slowly; the next is told to retry.
    let len = 8_000_000;
    let head = format!(
        "POST /append?durability=local HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"
    );
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let mut s = tls(&admin, &tmp.path().join("certs"), "op");
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&[b'x'; 1024]).unwrap();
            s.flush().unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let answer = status_of(tmp.path(), &admin, head.as_bytes());
    assert!(answer.contains(" 503 "), "{answer}");
    drop(slow);
    let grown_mib = rss_kib(pid).saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 100, "resident memory grew by {grown_mib} MiB");

    append_local(&admin, "after");
    let (clean, _) = served.stop();
    assert!(clean);
}
