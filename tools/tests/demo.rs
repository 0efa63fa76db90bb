//! `walship demo` end to end: a real three-node cluster in the binary's process, short
//! levels. Timing on a shared machine is noisy, so latencies are checked for order and
//! for floors no implementation can beat, never against each other.

use std::path::{Path, PathBuf};

use assert_cmd::cargo_bin_cmd;
use serde_json::Value;
use walship_engine::Lsn;

const LEVELS: [&str; 5] = [
    "async",
    "local",
    "remote-write",
    "remote-flush",
    "remote-apply",
];

fn demo(args: &[&str]) -> std::process::Output {
    cargo_bin_cmd!("walship")
        .arg("demo")
        .args(args)
        .output()
        .expect("run walship demo")
}

fn lsn(v: &Value) -> Lsn {
    v.as_str()
        .expect("an LSN is a string")
        .parse()
        .expect("an LSN in HI/LO form")
}

#[test]
fn json_report_covers_every_level_and_both_followers() {
    let out = demo(&["--seconds-per-level", "1", "--writers", "2", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["format"], "walship-demo/1");
    assert_eq!(doc["sync_policy"], "ANY 1 (*)");
    assert_eq!(doc["writers"], 2);
    assert_eq!(doc["kept"], false);
    let dir = doc["dir"].as_str().expect("dir");
    assert!(!Path::new(dir).exists(), "{dir} was removed");

    let levels = doc["levels"].as_array().expect("levels");
    let names: Vec<&str> = levels.iter().filter_map(|l| l["level"].as_str()).collect();
    assert_eq!(names, LEVELS);
    for l in levels {
        let name = &l["level"];
        assert!(l["commits"].as_u64().unwrap() > 0, "{name}: no commits");
        assert!(l["commits_per_s"].as_f64().unwrap() > 0.0, "{name}");
        let lat = &l["latency_us"];
        let p: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
            .iter()
            .map(|k| lat[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}")))
            .collect();
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "{name}: {p:?}");
        assert!(
            lat["mean"].as_f64().unwrap() <= p[4],
            "{name}: mean above max"
        );
        if name.as_str().is_some_and(|n| n.starts_with("remote")) {
            // A remote commit waits for a QUIC round trip to a follower and back.
            assert!(p[0] >= 10.0, "{name}: p50 {} µs", p[0]);
        }
    }

    // The leader as its admin endpoint would show it, followers included.
    let leader = &doc["leader"];
    assert_eq!(leader["schema"], "walship-status/1");
    assert_eq!(leader["node_id"], "n1");
    assert_eq!(leader["role"], "leader");
    let end = lsn(&leader["watermarks"]["end"]);
    let followers = leader["leading"]["followers"]
        .as_array()
        .expect("followers");
    let nodes: Vec<&str> = followers
        .iter()
        .filter_map(|f| f["node_id"].as_str())
        .collect();
    assert_eq!(nodes, ["n2", "n3"]);
    for f in followers {
        assert_eq!(f["state"], "streaming", "{f}");
        assert_eq!(f["sync_state"], "quorum", "{f}");
        let flush = lsn(&f["flush_lsn"]);
        assert!(flush > Lsn::ZERO && flush <= end, "{f}");
        assert!(lsn(&f["apply_lsn"]) <= flush, "{f}");
        assert!(flush <= lsn(&f["write_lsn"]), "{f}");
    }
}

#[test]
fn text_report_has_both_tables_and_keeps_the_logs_when_asked() {
    let out = demo(&["--seconds-per-level", "0.5", "--writers", "1", "--keep"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let header = |first: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("no line starting {first:?} in:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        header("level "),
        [
            "level",
            "commits",
            "commits/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "max",
            "flush",
            "lag",
            "catch-up"
        ]
    );
    // `walship lag`'s table, whose exact columns are that command's to test.
    let lag = header("follower ");
    for column in [
        "state",
        "sync",
        "sent_lsn",
        "flush_lsn",
        "apply_lsn",
        "flush_lag",
    ] {
        assert!(lag.contains(&column), "no {column} in {lag:?}");
    }
    for level in LEVELS {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{level} "))),
            "no row for {level}:\n{stdout}"
        );
    }
    for node in ["n2", "n3"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{node} ")) && l.contains("streaming")),
            "no row for {node}:\n{stdout}"
        );
    }

    let kept = lines
        .iter()
        .find_map(|l| l.strip_prefix("kept "))
        .and_then(|l| l.split(':').next())
        .unwrap_or_else(|| panic!("no kept directory in:\n{stdout}"));
    let dir = PathBuf::from(kept);
    assert!(dir.join("n1").is_dir(), "the leader's log is kept");
    // The followers' copies are valid logs.
    for node in ["n2", "n3"] {
        let verify = cargo_bin_cmd!("walship")
            .arg("verify")
            .arg(dir.join(node))
            .output()
            .expect("run walship verify");
        assert!(
            verify.status.success(),
            "{node}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).expect("remove the kept directory");
}

#[test]
fn a_failing_append_exits_non_zero_and_says_why() {
    // Larger than the engine's largest record (8 MiB by default).
    let out = demo(&["--seconds-per-level", "0.2", "--record-bytes", "9000000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("async: writer 0: append failed: record of 9000000 bytes exceeds"),
        "{stderr}"
    );
}

#[test]
fn arguments_are_checked_before_anything_starts() {
    for bad in [
        ["--seconds-per-level", "0"],
        ["--seconds-per-level", "soon"],
        ["--writers", "0"],
    ] {
        let out = demo(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(out.stdout.is_empty(), "{bad:?}: nothing ran");
    }
    let help = demo(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("walship-demo/1") && help.contains("--seconds-per-level"),
        "{help}"
    );
}
