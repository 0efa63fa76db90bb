//! The `walship` binary against real logs written with the engine's API, and real
//! certificate files loaded back with the transport's.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use assert_cmd::cargo_bin_cmd;
use serde_json::Value;
use walship_engine::{BackendKind, Durability, Epoch, Log, Lsn, Options};
use walship_transport::tls::{ClusterCa, NodeIdentity};

/// Small segments, so a few hundred records span several.
const CAP: u64 = 64 * 1024;
/// Records written in epoch 1, then as many in epoch 2.
const PER_EPOCH: u64 = 300;

fn opts() -> Options {
    Options {
        segment_capacity: CAP,
        backend: BackendKind::Portable,
        ..Options::default()
    }
}

/// Record `seq`: text mostly, binary (with a NUL and high bytes) every fifth.
fn payload(seq: u64) -> Vec<u8> {
    if seq % 5 == 4 {
        (0..(40 + seq % 200)).map(|i| (i * 7 + seq) as u8).collect()
    } else {
        let mut v = format!("put key-{seq:05}=").into_bytes();
        v.resize(100 + (seq as usize * 37) % 700, b'v');
        v
    }
}

#[derive(Debug, Clone, Copy)]
struct BatchInfo {
    base: Lsn,
    end: Lsn,
    epoch: Epoch,
    records: u32,
    padding: bool,
}

/// What was written, as the engine's readers see it.
struct Written {
    batches: Vec<BatchInfo>,
    /// `(commit token, epoch, payload)` per record.
    records: Vec<(Lsn, Epoch, Vec<u8>)>,
    epoch_starts: Vec<(Epoch, Lsn)>,
    end: Lsn,
}

impl Written {
    fn data_batches(&self) -> impl Iterator<Item = &BatchInfo> {
        self.batches.iter().filter(|b| !b.padding)
    }
}

fn read_back(log: &Log) -> Written {
    let mut batches = Vec::new();
    let mut records = Vec::new();
    let mut r = log.reader(log.start_lsn()).unwrap();
    while let Some(b) = r.try_next().unwrap() {
        batches.push(BatchInfo {
            base: b.base(),
            end: b.end(),
            epoch: b.epoch(),
            records: b.record_count(),
            padding: b.is_padding(),
        });
        records.extend(b.records().map(|r| (r.lsn, r.epoch, r.data.to_vec())));
    }
    Written {
        batches,
        records,
        epoch_starts: log.epoch_history().entries().to_vec(),
        end: log.end_lsn(),
    }
}

/// A log over several segments in two epochs, written through the engine, left open.
fn write_log(dir: &Path) -> (Log, Written) {
    let log = Log::open(dir, opts()).unwrap();
    for (epoch, seqs) in [(1, 0..PER_EPOCH), (2, PER_EPOCH..2 * PER_EPOCH)] {
        log.begin_epoch(Epoch::new(epoch)).unwrap();
        for seq in seqs {
            let lsn = log.append_batch(&[payload(seq)]).unwrap()[0];
            if seq % 10 == 0 {
                log.commit(lsn, Durability::Local).wait().unwrap();
            }
        }
    }
    log.commit(log.end_lsn(), Durability::Local).wait().unwrap();
    let written = read_back(&log);
    (log, written)
}

/// As [`write_log`], closed.
fn build(dir: &Path) -> Written {
    let (log, written) = write_log(dir);
    log.close().unwrap();
    assert!(
        written.batches.iter().any(|b| b.base.get() >= 3 * CAP),
        "several segments"
    );
    written
}

fn segment_file(dir: &Path, lsn: Lsn) -> PathBuf {
    dir.join(format!("{:016x}.wal", lsn.get() & !(CAP - 1)))
}

fn poke(dir: &Path, at: Lsn, bytes: &[u8]) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(segment_file(dir, at))
        .unwrap();
    f.write_all_at(bytes, at.get() % CAP).unwrap();
}

/// Runs `walship args…`; returns exit code, stdout, stderr.
fn walship(args: &[&str]) -> (i32, String, String) {
    let out = cargo_bin_cmd!("walship").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn path_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn every_subcommand_has_help() {
    let (code, top, _) = walship(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["certs", "inspect", "dump", "verify"] {
        assert!(top.contains(sub), "{top}");
        let (code, help, err) = walship(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub}: {err}");
        assert!(help.contains("Usage: walship"), "{sub}: {help}");
    }
    let (_, verify, _) = walship(&["verify", "--help"]);
    assert!(
        verify.contains("Torn tail") && verify.contains("still exits 0"),
        "{verify}"
    );
    let (_, inspect, _) = walship(&["inspect", "--help"]);
    assert!(inspect.contains("walship-inspect/1"), "{inspect}");
    let (code, _, err) = walship(&["dump"]);
    assert_eq!(code, 2, "usage errors exit 2: {err}");
}

#[test]
fn inspect_shows_what_was_written() {
    let d = tempfile::tempdir().unwrap();
    let w = build(d.path());
    let (code, text, err) = walship(&["inspect", path_arg(d.path())]);
    assert_eq!(code, 0, "{err}");
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key}: {text}"))
    };
    assert_eq!(field("end "), w.end.to_string());
    assert_eq!(field("start "), "0/40");
    assert_eq!(field("segment size "), "64 KiB");
    let total = 2 * PER_EPOCH;
    let batches = w.data_batches().count();
    assert!(
        text.contains(&format!("batches, {total} records"))
            && text.contains(&format!("{batches} batches")),
        "{text}"
    );
    assert!(text.contains("problems: none"), "{text}");
    // Each segment's row: file, base, end, batches, records, bytes, epochs, state.
    let first = text
        .lines()
        .find(|l| l.starts_with("0000000000000000.wal"))
        .unwrap();
    let cols: Vec<&str> = first.split_whitespace().collect();
    let in_first: Vec<&BatchInfo> = w.data_batches().filter(|b| b.base.get() < CAP).collect();
    assert_eq!(cols[1], "0/0");
    assert_eq!(cols[2], "0/10000", "the first segment is full");
    assert_eq!(cols[3], in_first.len().to_string());
    let recs: u32 = in_first.iter().map(|b| b.records).sum();
    assert_eq!(cols[4], recs.to_string());
    assert_eq!((cols[6], cols[7]), ("1", "full"));
    for (e, s) in &w.epoch_starts {
        assert!(
            text.lines().any(|l| l
                .split_whitespace()
                .eq([e.to_string(), s.to_string()].iter().map(String::as_str))),
            "epoch {e} at {s}: {text}"
        );
    }
}

#[test]
fn inspect_json_matches_what_was_written() {
    let d = tempfile::tempdir().unwrap();
    let w = build(d.path());
    let (code, json, err) = walship(&["inspect", "--json", path_arg(d.path())]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["format"], "walship-inspect/1");
    assert_eq!(doc["segment_capacity"], CAP);
    assert_eq!(doc["start"], "0/40");
    assert_eq!(doc["end"], w.end.to_string());
    assert_eq!(doc["checkpoint"], Value::Null);
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["problems"].as_array().unwrap().len(), 0);

    let segments = doc["segments"].as_array().unwrap();
    let files = fs::read_dir(d.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wal")
        })
        .count();
    assert_eq!(segments.len(), files);
    for s in segments {
        let base: Lsn = s["base"].as_str().unwrap().parse().unwrap();
        let here: Vec<&BatchInfo> = w
            .data_batches()
            .filter(|b| b.base.get() & !(CAP - 1) == base.get())
            .collect();
        assert_eq!(s["file"], format!("{:016x}.wal", base.get()));
        assert_eq!(s["batches"], here.len() as u64, "{s}");
        assert_eq!(
            s["records"],
            here.iter().map(|b| u64::from(b.records)).sum::<u64>()
        );
        assert_eq!(
            s["bytes"],
            here.iter().map(|b| b.end.get() - b.base.get()).sum::<u64>()
        );
        if let (Some(lo), Some(hi)) = (here.first(), here.last()) {
            assert_eq!(s["epochs"]["first"], lo.epoch.get());
            assert_eq!(s["epochs"]["last"], hi.epoch.get());
        } else {
            assert_eq!(s["epochs"], Value::Null);
        }
        let expected_state = if here.is_empty() {
            "spare"
        } else if base.get() == w.end.get().saturating_sub(1) & !(CAP - 1) {
            "tail"
        } else {
            "full"
        };
        assert_eq!(s["state"], expected_state, "{s}");
    }
    let history: Vec<(u64, String)> = doc["epoch_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["epoch"].as_u64().unwrap(),
                e["start"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = w
        .epoch_starts
        .iter()
        .map(|(e, s)| (e.get(), s.to_string()))
        .collect();
    assert_eq!(history, expected);
}

#[test]
fn inspect_reads_a_live_log_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (log, w) = write_log(d.path());
    fs::write(d.path().join("0000000000990000.wal.tmp"), b"leftover").unwrap();
    let before = snapshot(d.path());
    for args in [
        vec!["inspect", "--json", path_arg(d.path())],
        vec!["dump", path_arg(d.path())],
        vec!["verify", path_arg(d.path())],
    ] {
        let (code, out, err) = walship(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        if args[1] == "--json" {
            let doc: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(doc["end"], w.end.to_string());
        }
    }
    assert_eq!(
        snapshot(d.path()),
        before,
        "the tools changed the directory"
    );
    // The log, open all along, still works.
    let lsn = log.append(b"after").unwrap();
    log.commit(lsn, Durability::Local).wait().unwrap();
}

#[test]
fn dump_shows_records_from_a_position_up_to_a_limit() {
    let d = tempfile::tempdir().unwrap();
    let w = build(d.path());
    let (code, all, err) = walship(&["dump", "--payload-bytes", "1000", path_arg(d.path())]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = all.lines().filter(|l| l.starts_with("  record ")).collect();
    assert_eq!(lines.len(), w.records.len());
    for (line, (lsn, _, data)) in lines.iter().zip(&w.records) {
        assert!(
            line.starts_with(&format!(
                "  record lsn {:<10}  len {:<6} ",
                lsn.to_string(),
                data.len()
            )),
            "{line}"
        );
        match std::str::from_utf8(data) {
            Ok(text) if !data.contains(&0) => {
                assert!(line.ends_with(&format!("{text:?}")), "{line}")
            }
            _ => {
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                assert!(line.ends_with(&format!("0x{hex}")), "{line}");
            }
        }
    }
    let batch_lines = all.lines().filter(|l| l.starts_with("batch ")).count();
    assert_eq!(batch_lines, w.data_batches().count());
    assert_eq!(
        all.lines().filter(|l| l.starts_with("padding ")).count(),
        w.batches.iter().filter(|b| b.padding).count()
    );
    for b in w.data_batches() {
        let line = format!(
            "batch    lsn {:<10}  end {:<10}  epoch {}  time ",
            b.base.to_string(),
            b.end.to_string(),
            b.epoch
        );
        assert!(all.contains(&line), "{line}");
    }
    assert!(all
        .lines()
        .filter(|l| l.starts_with("batch "))
        .all(|l| l.ends_with(" ok")));
    assert!(all.ends_with(&format!(
        "{} records; the log ends at {}\n",
        w.records.len(),
        w.end
    )));

    // From a commit token: the record after it comes first; --limit caps the records.
    let k = 2 * PER_EPOCH as usize / 3;
    let from = w.records[k].0.to_string();
    let (code, some, err) = walship(&["dump", "--from", &from, "--limit", "5", path_arg(d.path())]);
    assert_eq!(code, 0, "{err}");
    let shown: Vec<&str> = some
        .lines()
        .filter(|l| l.starts_with("  record "))
        .collect();
    assert_eq!(shown.len(), 5, "{some}");
    for (line, (lsn, _, _)) in shown.iter().zip(&w.records[k + 1..]) {
        assert!(
            line.starts_with(&format!("  record lsn {:<10}", lsn.to_string())),
            "{line}"
        );
    }
    assert!(
        some.ends_with("stopped after 5 records (--limit)\n"),
        "{some}"
    );
    // Decimal positions work too; beyond the end there is nothing.
    let beyond = (w.end.get() + 1).to_string();
    let (code, none, _) = walship(&["dump", "--from", &beyond, path_arg(d.path())]);
    assert_eq!(code, 0);
    assert!(
        none.contains(&format!(
            "nothing at or after {}",
            Lsn::new(w.end.get() + 1)
        )),
        "{none}"
    );
    let (code, _, err) = walship(&["dump", "--from", "x/1", path_arg(d.path())]);
    assert_eq!(code, 2);
    assert!(err.contains("HI/LO"), "{err}");
}

#[test]
fn verify_accepts_a_good_log() {
    let d = tempfile::tempdir().unwrap();
    let w = build(d.path());
    let (code, out, err) = walship(&["verify", path_arg(d.path())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("OK\n"), "{out}");
    assert!(out.contains(&format!("log 0/40..{}", w.end)), "{out}");
    assert!(
        out.contains(&format!("{} records, epochs 1..2", w.records.len())),
        "{out}"
    );
}

#[test]
fn verify_names_the_file_and_offset_of_a_flipped_byte() {
    let d = tempfile::tempdir().unwrap();
    let w = build(d.path());
    // A batch in the middle of the second segment: its body, 10 bytes past its header.
    let in_second: Vec<&BatchInfo> = w
        .data_batches()
        .filter(|b| b.base.get() / CAP == 1)
        .collect();
    let victim = in_second[in_second.len() / 2];
    poke(
        d.path(),
        Lsn::new(victim.base.get() + 40 + 10),
        &[0x5a ^ 0xff],
    );
    let expected_file = segment_file(d.path(), victim.base);
    let expected_offset = victim.base.get() - CAP;

    let (code, out, err) = walship(&["verify", path_arg(d.path())]);
    assert_eq!(code, 1, "{out}{err}");
    let verdict = out.lines().find(|l| l.starts_with("CORRUPT ")).unwrap();
    assert!(
        verdict.starts_with(&format!(
            "CORRUPT {} at offset {expected_offset} (LSN {}): invalid batch (CRC mismatch",
            expected_file.display(),
            victim.base
        )),
        "{verdict}"
    );
    // inspect still runs and marks the segment; dump prints up to the spot and goes on.
    let (code, json, _) = walship(&["inspect", "--json", path_arg(d.path())]);
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["segments"][1]["state"], "corrupt");
    assert_eq!(doc["problems"][0]["offset"], expected_offset);
    assert_eq!(doc["problems"][0]["kind"], "corruption");
    let (code, dump, _) = walship(&["dump", path_arg(d.path())]);
    assert_eq!(code, 1);
    assert!(dump.contains(&format!(
        "CORRUPTION  {} at offset {expected_offset}",
        expected_file.display()
    )));
    assert!(
        dump.contains(&format!(
            "batch    lsn {:<10}",
            w.batches.last().unwrap().base
        )) || w.batches.last().unwrap().padding
    );
}

#[test]
fn verify_reports_a_torn_tail_and_exits_zero() {
    let d = tempfile::tempdir().unwrap();
    let w = build(d.path());
    // A crash, not a clean close (whose marker makes any damage before its end corrupt).
    fs::remove_file(d.path().join("walship.closed")).unwrap();
    // The last batch half written: its second half zeros, as a crash mid-write leaves it.
    let last = *w.data_batches().last().unwrap();
    let len = last.end.get() - last.base.get();
    poke(
        d.path(),
        Lsn::new(last.base.get() + len / 2),
        &vec![0; (len - len / 2) as usize],
    );
    let (code, out, err) = walship(&["verify", path_arg(d.path())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "WARNING torn tail: {} at offset {} (LSN {}): torn last batch",
            segment_file(d.path(), last.base).display(),
            last.base.get() % CAP,
            last.base
        )),
        "{out}"
    );
    assert!(out.ends_with("OK\n"), "{out}");
    // The engine agrees: the log now ends where the torn batch began.
    assert_eq!(Log::open(d.path(), opts()).unwrap().end_lsn(), last.base);
}

#[test]
fn tools_refuse_what_is_not_a_log() {
    let d = tempfile::tempdir().unwrap();
    for sub in ["inspect", "dump", "verify"] {
        let (code, _, err) = walship(&[sub, path_arg(d.path())]);
        assert_eq!(code, 2, "{sub}");
        assert!(err.contains("walship.meta"), "{err}");
    }
    build(d.path());
    fs::write(d.path().join("walship.meta"), b"garbage").unwrap();
    let (code, out, _) = walship(&["verify", path_arg(d.path())]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!(
            "CORRUPT {} at offset 0",
            d.path().join("walship.meta").display()
        )),
        "{out}"
    );
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

#[test]
fn certs_load_back_and_are_not_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("certs");
    let o = path_arg(&out);
    let (code, text, err) = walship(&[
        "certs",
        "--out",
        o,
        "--cluster",
        "prod",
        "--nodes",
        "n1,n2,n3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("created the CA of cluster \"prod\""),
        "{text}"
    );
    let ca = ClusterCa::from_pem(&read(&out.join("ca.pem")), &read(&out.join("ca.key"))).unwrap();
    assert_eq!(ca.cluster_id(), "prod");
    for node in ["n1", "n2", "n3"] {
        let id = NodeIdentity::from_pem(
            &read(&out.join(format!("{node}.pem"))),
            &read(&out.join(format!("{node}.key"))),
        )
        .unwrap();
        assert_eq!((id.cluster_id(), id.node_id()), ("prod", node));
        let mode = fs::metadata(out.join(format!("{node}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{node}.key");
        assert!(text.contains(&out.join(format!("{node}.pem")).display().to_string()));
    }
    assert_eq!(
        fs::metadata(out.join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Existing files are not overwritten.
    let before = snapshot(&out);
    let (code, _, err) = walship(&["certs", "--out", o, "--cluster", "prod", "--nodes", "n3,n4"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("refusing to overwrite") && err.contains("n3.pem") && !err.contains("n4"),
        "{err}"
    );
    assert_eq!(snapshot(&out), before);

    // The existing CA issues a new node; --force re-issues an existing one.
    let (code, text, err) = walship(&["certs", "--out", o, "--nodes", "n4"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("reused the CA of cluster \"prod\""), "{text}");
    let (code, _, err) = walship(&["certs", "--out", o, "--nodes", "n1", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        read(&out.join("ca.pem")),
        ca.cert_pem(),
        "the CA is never replaced"
    );
    assert_ne!(
        read(&out.join("n1.key")),
        String::from_utf8(before[&out.join("n1.key")].clone()).unwrap()
    );
    for node in ["n1", "n4"] {
        let id = NodeIdentity::from_pem(
            &read(&out.join(format!("{node}.pem"))),
            &read(&out.join(format!("{node}.key"))),
        )
        .unwrap();
        assert_eq!(id.cluster_id(), "prod");
    }
    let (code, _, err) = walship(&["certs", "--out", o, "--cluster", "staging", "--nodes", "n5"]);
    assert_eq!(code, 2);
    assert!(err.contains("not \"staging\""), "{err}");
}

#[test]
fn certs_refuses_bad_names_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("certs");
    for (nodes, why) in [
        ("a,,b", "empty"),
        ("a,b,a", "given twice"),
        ("a,ca", "the CA's"),
        ("a,b/c", "only ASCII letters"),
        ("a,-x", "start with"),
        ("a,b c", "only ASCII letters"),
    ] {
        let (code, _, err) = walship(&[
            "certs",
            "--out",
            path_arg(&out),
            "--cluster",
            "prod",
            "--nodes",
            nodes,
        ]);
        assert_eq!(code, 2, "{nodes}");
        assert!(err.contains(why), "{nodes}: {err}");
        assert!(!out.exists(), "{nodes}: nothing may be written");
    }
    let (code, _, err) = walship(&["certs", "--out", path_arg(&out), "--nodes", "a"]);
    assert_eq!(code, 2);
    assert!(err.contains("--cluster is required"), "{err}");
    let (code, _, err) = walship(&[
        "certs",
        "--out",
        path_arg(&out),
        "--cluster",
        "bad name",
        "--nodes",
        "a",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("cluster id"), "{err}");
}

#[test]
fn verify_explains_an_unflushed_tail_and_exits_zero() {
    let d = tempfile::tempdir().unwrap();
    build(d.path());
    // Three more records, each its own batch, in one segment (more if one crosses).
    let log = Log::open(d.path(), opts()).unwrap();
    let mut last: Vec<u64> = Vec::new();
    while last.len() < 3 || last.iter().any(|&l| (l - 1) / CAP != (last[0] - 1) / CAP) {
        let lsn = log.append(&payload(10_000 + last.len() as u64)).unwrap();
        log.commit(lsn, Durability::Local).wait().unwrap();
        last.push(lsn.get());
        if last.len() > 3 {
            last.remove(0);
        }
    }
    let w = read_back(&log);
    log.close().unwrap();
    drop(log);
    fs::remove_file(d.path().join("walship.closed")).unwrap();
    // The last three batches as a writer that had flushed none of them stamps them, and
    // the first of them lost to a power loss while the later two reached the disk.
    let tail: Vec<&BatchInfo> = w.data_batches().collect();
    let tail = &tail[tail.len() - 3..];
    assert!(tail
        .iter()
        .all(|b| b.base.get() / CAP == tail[0].base.get() / CAP));
    let header_len = walship_engine::format::BATCH_HEADER_LEN;
    for b in tail {
        let mut h = vec![0u8; header_len];
        fs::File::open(segment_file(d.path(), b.base))
            .unwrap()
            .read_exact_at(&mut h, b.base.get() % CAP)
            .unwrap();
        walship_engine::format::restamp(&mut h, tail[0].base);
        poke(d.path(), b.base, &h);
    }
    poke(
        d.path(),
        Lsn::new(tail[0].base.get() + header_len as u64 + 3),
        b"\xde\xad",
    );
    let (code, out, err) = walship(&["verify", path_arg(d.path())]);
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("WARNING unflushed tail: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains(&format!(
            "{} at offset {} (LSN {}): invalid batch (CRC mismatch",
            segment_file(d.path(), tail[0].base).display(),
            tail[0].base.get() % CAP,
            tail[0].base
        )) && line.contains("followed by 2 valid batch(es)")
            && line.contains("never acknowledged")
            && line.ends_with("the next open cuts it there"),
        "{line}"
    );
    assert!(out.ends_with("OK\n"), "{out}");
    let (log, report) = Log::open_with_report(d.path(), opts()).unwrap();
    assert_eq!(log.end_lsn(), tail[0].base);
    assert_eq!(report.unflushed_cut.map(|c| c.discarded_batches), Some(2));
}
