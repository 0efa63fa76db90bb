//! Issue 11, "files an operator can trust", against the real binary:
//!
//! - before: `walship certs` wrote the CA key through a planted `ca.key.tmp` symlink;
//!   a data directory was taken over whatever it held (a user's `thesis.tmp` was
//!   deleted), was world-readable, and recorded no identity (a node of cluster "other"
//!   led a copy of cluster "prod"'s data); a FIFO named as a segment hung `verify`,
//!   `inspect` and `dump`, and `walship.meta` linked to `/dev/zero` read until OOM;
//! - now each is refused with an error naming the file, and nothing is written or lost.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{certs, config, free_tcp, free_udp, ok, walship, Served};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn mkfifo(p: &Path) {
    assert!(std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap()
        .success());
}

/// `walship ARGS…`, which must fail within 20 s (not hang); returns its standard error.
fn fails(args: &[&str]) -> String {
    let out = walship()
        .args(args)
        .timeout(Duration::from_secs(20))
        .output()
        .unwrap();
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "walship {args:?}: {:?}",
        out.status
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn certs_never_write_through_a_planted_symlink_nor_into_a_directory_others_can_write() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("certs");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700)).unwrap();
    // What an attacker who could write there would plant: the old temporary name, and
    // the key's own name, both pointing at a file of theirs.
    let theirs = d.path().join("attacker-reads-this");
    fs::write(&theirs, b"").unwrap();
    symlink(&theirs, out.join("ca.key.tmp")).unwrap();
    symlink(&theirs, out.join("n1.key")).unwrap();
    ok(&[
        "certs",
        "--out",
        out.to_str().unwrap(),
        "--cluster",
        "prod",
        "--nodes",
        "n2",
    ]);
    let e = fails(&["certs", "--out", out.to_str().unwrap(), "--nodes", "n1"]);
    assert!(e.contains("refusing to overwrite"), "{e}");
    ok(&[
        "certs",
        "--out",
        out.to_str().unwrap(),
        "--nodes",
        "n1",
        "--force",
    ]);
    assert_eq!(
        fs::read(&theirs).unwrap(),
        b"",
        "nothing went through a link"
    );
    for f in ["ca.key", "n1.key", "n2.key"] {
        let m = fs::symlink_metadata(out.join(f)).unwrap();
        assert!(m.file_type().is_file(), "{f} is a file of its own");
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
    }
    let tmp: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert_eq!(
        tmp,
        ["ca.key.tmp"],
        "only the planted link; no temporary file left"
    );

    // A directory the group or others may write into is refused, for any subcommand.
    let shared = d.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let e = fails(&[
        "certs",
        "--out",
        shared.to_str().unwrap(),
        "--cluster",
        "prod",
        "--nodes",
        "n1",
    ]);
    assert!(
        e.contains("refusing to write keys into") && e.contains("writable by everyone"),
        "{e}"
    );
    assert_eq!(fs::read_dir(&shared).unwrap().count(), 0, "nothing written");
    fs::set_permissions(&out, fs::Permissions::from_mode(0o770)).unwrap();
    let e = fails(&["certs", "renew", "--out", out.to_str().unwrap(), "n1"]);
    assert!(e.contains("writable by its group"), "{e}");
}

#[test]
fn renewed_and_revoked_certificates_keep_their_names_and_roles() {
    let d = tempfile::tempdir().unwrap();
    let out = certs(d.path(), "prod", "n1");
    let o = out.to_str().unwrap();
    let before = fs::read_to_string(out.join("op.pem")).unwrap();
    let renewed = ok(&["certs", "renew", "--out", o, "op", "n1", "--days", "30"]);
    assert!(renewed.contains("renewed 2 certificate(s)"), "{renewed}");
    assert!(
        renewed.contains("operator") && renewed.contains("node"),
        "{renewed}"
    );
    assert_ne!(fs::read_to_string(out.join("op.pem")).unwrap(), before);
    let info = walship_transport::tls::CertInfo::from_pem(
        &fs::read_to_string(out.join("op.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(info.peer.role, walship_transport::tls::Role::Operator);
    let days = info
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs()
        / 86_400;
    assert!((29..=30).contains(&days), "{days}");
    // Revoking twice lists it once; the list grows with each revocation.
    ok(&["certs", "revoke", "--out", o, "mon"]);
    let again = ok(&[
        "certs",
        "revoke",
        "--out",
        o,
        "mon",
        "--cert",
        out.join("n1.pem").to_str().unwrap(),
    ]);
    assert!(
        again.contains("now revokes 2 certificate(s) (list number 3)"),
        "{again}"
    );
    let e = fails(&["certs", "revoke", "--out", o, "nobody"]);
    assert!(e.contains("nobody.pem"), "{e}");
}

#[test]
fn a_data_directory_is_private_never_taken_over_and_knows_its_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certs(dir, "prod", "n1");
    // A directory holding someone's files is refused, and left as it was.
    let data = dir.join("data/n1");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("thesis.tmp"), b"three years of work").unwrap();
    let (listen, admin) = (free_udp(), free_tcp());
    let path = config(dir, "n1", &listen, &admin, "", "ANY 1 (*)");
    let e = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(
        e.contains("is not a walship log") && e.contains("thesis.tmp"),
        "{e}"
    );
    assert_eq!(
        fs::read(data.join("thesis.tmp")).unwrap(),
        b"three years of work"
    );
    assert_eq!(
        fs::read_dir(&data).unwrap().count(),
        1,
        "nothing created in it"
    );
    fs::remove_file(data.join("thesis.tmp")).unwrap();
    fs::remove_dir(&data).unwrap();

    // A new one is private, files included; a stray .tmp of the user's survives restarts.
    let served = Served::start(&path, &admin);
    common::status_until(&admin, "n1 leads", |v| v["role"] == "leader");
    ok(&["append", &admin, "-d", "local", "prod-record"]);
    assert!(served.stop().0);
    assert_eq!(mode(&data), 0o700);
    for e in fs::read_dir(&data).unwrap() {
        let e = e.unwrap();
        assert_eq!(mode(&e.path()), 0o600, "{:?}", e.file_name());
    }
    fs::write(data.join("notes.tmp"), b"mine").unwrap();
    let served = Served::start(&path, &admin);
    assert!(served.stop().0);
    assert_eq!(fs::read(data.join("notes.tmp")).unwrap(), b"mine");
    fs::remove_file(data.join("notes.tmp")).unwrap();

    // A copy of prod's data started as a node of cluster "other" is refused, naming both.
    let other = tempfile::tempdir().unwrap();
    certs(other.path(), "other", "n1");
    let copy = other.path().join("data/n1");
    fs::create_dir_all(&copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o700)).unwrap();
    for e in fs::read_dir(&data).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    let path = config(
        other.path(),
        "n1",
        &free_udp(),
        &free_tcp(),
        "",
        "ANY 1 (*)",
    );
    let e = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(
        e.contains(
            "this log is node n1 of cluster prod, but it is opened as node n1 of cluster other"
        ),
        "{e}"
    );
    assert!(
        ok(&["dump", copy.to_str().unwrap()]).contains("prod-record"),
        "untouched"
    );

    // A directory others can write into is refused.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();
    let path = config(dir, "n1", &free_udp(), &free_tcp(), "", "ANY 1 (*)");
    let e = fails(&["serve", "--config", path.to_str().unwrap()]);
    assert!(e.contains("is writable by everyone (mode 0777)"), "{e}");
}

#[test]
fn offline_tools_refuse_fifos_and_unbounded_files_instead_of_hanging() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log");
    {
        let l = walship_engine::Log::open(&log, walship_engine::Options::default()).unwrap();
        let lsn = l.append(b"hello").unwrap();
        l.commit(lsn, walship_engine::Durability::Local)
            .wait()
            .unwrap();
        l.close().unwrap();
    }
    let l = log.to_str().unwrap();
    // A FIFO where a later segment would be.
    mkfifo(&log.join("0000000100000000.wal"));
    for sub in ["verify", "inspect", "dump"] {
        let e = fails(&[sub, l]);
        assert!(
            e.contains("0000000100000000.wal") && e.contains("not a regular file"),
            "{sub}: {e}"
        );
    }
    fs::remove_file(log.join("0000000100000000.wal")).unwrap();
    // The meta and epoch files linked to /dev/zero.
    for f in ["walship.meta", "epochs"] {
        let p = log.join(f);
        let _ = fs::rename(&p, log.join(format!("{f}.saved")));
        symlink("/dev/zero", &p).unwrap();
        for sub in ["verify", "inspect", "dump"] {
            let e = fails(&[sub, l]);
            assert!(
                e.contains(f) && e.contains("symbolic link"),
                "{sub} {f}: {e}"
            );
        }
        fs::remove_file(&p).unwrap();
        let _ = fs::rename(log.join(format!("{f}.saved")), &p);
    }
    assert!(ok(&["verify", l]).trim_end().ends_with("OK"));
}
