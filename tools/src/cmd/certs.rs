//! `walship certs`: the cluster CA, certificates for nodes, operators and monitors, their
//! renewal, and the revocation list, as files.
//!
//! Certificates come from `walship_transport::tls`, the same code the nodes use to
//! check each other, so what this writes is exactly what the nodes load.
//!
//! Files are written as an operator can trust them: the directory must belong to this
//! user and not be writable by the group or others (someone who can write there could
//! plant a symlink or swap a key); every file is first written under a random name
//! created with `O_CREAT | O_EXCL` (which never follows a symlink), fsynced, then renamed
//! into place, and the directory fsynced.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use walship_tools::outcome::Failure;
use walship_tools::text::{Align, Table};
use walship_transport::tls::{
    read_revocation_list, CertInfo, ClusterCa, NodeIdentity, Revoked, Role, Validity,
};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const CRL: &str = "crl.pem";
/// Private keys: readable by their owner only.
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Create a cluster CA and certificates for nodes, operators and monitors
///
/// Writes into --out: the cluster CA (ca.pem, ca.key), an empty revocation list
/// (crl.pem), and for each name <name>.pem (its certificate chain) and <name>.key (its
/// private key, mode 0600). A directory it creates is mode 0700; an existing one must
/// belong to you and not be writable by group or others.
///
/// Roles: --nodes replicate (and serve the admin endpoint), --operators may change the
/// cluster through it (append, promote, step down, re-point, drop slots), --monitors may
/// read /status and /metrics. Certificates are valid for --days (90 by default): renew
/// them with `walship certs renew`, revoke them with `walship certs revoke`.
///
/// If --out already holds ca.pem and ca.key, that CA issues the new certificates: this is
/// how a node or an operator is added. An existing CA is never replaced (that would
/// orphan every certificate it issued); to start over, remove ca.pem and ca.key.
///
/// Names: 1 to 63 ASCII letters, digits, '-', '_' or '.', starting with a letter or
/// digit, not "ca" or "crl", each once over all roles. A node's certificate names it as
/// DNS name <node> and URI walship://<cluster>/<node>; an operator's or monitor's as URI
/// walship://<cluster>/<role>/<name>.
///
/// Existing files are not overwritten unless --force is given; nothing is written
/// unless every name is valid.
#[derive(Debug, clap::Args)]
#[command(
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Directory to write into (created if missing)
    #[arg(long, value_name = "DIR", required = true)]
    out: Option<PathBuf>,
    /// Cluster name, recorded in every certificate (required unless --out holds a CA)
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// Node names, comma-separated
    #[arg(long, value_name = "A,B,…", value_delimiter = ',')]
    nodes: Vec<String>,
    /// Operator names, comma-separated
    #[arg(long, value_name = "A,B,…", value_delimiter = ',')]
    operators: Vec<String>,
    /// Monitor names (Prometheus, dashboards), comma-separated
    #[arg(long, value_name = "A,B,…", value_delimiter = ',')]
    monitors: Vec<String>,
    /// Days the new certificates are valid
    #[arg(long, default_value_t = Validity::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(Validity::MAX_DAYS)))]
    days: u32,
    /// Overwrite existing files of these names (re-issue them)
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Re-issue certificates before they expire: same name and role, a new key
    ///
    /// Each NAME's <name>.pem in DIR says its role. The old certificate stays valid
    /// until it expires (revoke it if its key may have leaked). Copy the new files over a
    /// node's `tls.cert` and `tls.key`: the node reads them again when they change, no
    /// restart.
    #[command(verbatim_doc_comment)]
    Renew {
        /// The directory holding the CA and the certificates
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Whose certificates
        #[arg(required = true)]
        names: Vec<String>,
        /// Days the new certificates are valid
        #[arg(long, default_value_t = Validity::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(Validity::MAX_DAYS)))]
        days: u32,
    },
    /// Revoke certificates: adds them to DIR/crl.pem, signed by the CA
    ///
    /// Copy crl.pem to every node (its `tls.crl`): a node re-reads the file when it
    /// changes, and refuses a revoked certificate at the next handshake, replication and
    /// admin alike, without a restart. NAME revokes DIR/<name>.pem; --cert FILE revokes
    /// any certificate file (one found on a lost laptop, say).
    #[command(verbatim_doc_comment)]
    Revoke {
        /// The directory holding the CA
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Whose certificates (DIR/<name>.pem)
        names: Vec<String>,
        /// Certificate files to revoke
        #[arg(long, value_name = "FILE")]
        cert: Vec<PathBuf>,
    },
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    match &args.action {
        Some(Action::Renew {
            out: dir,
            names,
            days,
        }) => renew(dir, names, *days, out),
        Some(Action::Revoke {
            out: dir,
            names,
            cert,
        }) => revoke(dir, names, cert, out),
        None => issue(args, out),
    }
}

fn fail(what: &str, p: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::Error(format!("{what} {}: {e}", p.display()))
}

fn issue(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    let dir = args
        .out
        .as_deref()
        .ok_or_else(|| Failure::Error("--out is required".into()))?;
    let wanted: Vec<(Role, &String)> = args
        .nodes
        .iter()
        .map(|n| (Role::Node, n))
        .chain(args.operators.iter().map(|n| (Role::Operator, n)))
        .chain(args.monitors.iter().map(|n| (Role::Monitor, n)))
        .collect();
    if wanted.is_empty() {
        return Err(Failure::Error(
            "name something to issue: --nodes, --operators or --monitors".into(),
        ));
    }
    check_names(wanted.iter().map(|(_, n)| n.as_str()))?;
    let (ca, reused) = load_or_generate_ca(dir, args.cluster.as_deref())?;
    // Issue every certificate before writing anything: a bad name writes nothing.
    let validity = Validity::days(args.days);
    let issued = wanted
        .iter()
        .map(|(role, name)| {
            ca.issue(*role, name, validity)
                .map_err(|e| Failure::Error(format!("{role} {name:?}: {e}")))
        })
        .collect::<Result<Vec<NodeIdentity>, Failure>>()?;
    let files: Vec<(PathBuf, PathBuf)> =
        issued.iter().map(|i| files_of(dir, i.node_id())).collect();
    if !args.force {
        let existing: Vec<String> = files
            .iter()
            .flat_map(|(c, k)| [c, k])
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Failure::Error(format!(
                "refusing to overwrite {} (pass --force to re-issue these)",
                existing.join(", ")
            )));
        }
    }

    prepare_dir(dir)?;
    if !reused {
        write_file(&dir.join(CA_CERT), ca.cert_pem(), CERT_MODE)?;
        write_file(&dir.join(CA_KEY), &ca.key_pem(), KEY_MODE)?;
        let crl = ca
            .revocation_list(&[], 1)
            .map_err(|e| Failure::Error(format!("the revocation list: {e}")))?;
        write_file(&dir.join(CRL), &crl, CERT_MODE)?;
    }
    for (identity, (cert, key)) in issued.iter().zip(&files) {
        let (chain_pem, key_pem) = identity.to_pem();
        write_file(cert, &chain_pem, CERT_MODE)?;
        write_file(key, &key_pem, KEY_MODE)?;
    }
    sync_dir(dir)?;

    if reused {
        writeln!(
            out,
            "reused the CA of cluster {:?} in {} to issue {} certificate(s)",
            ca.cluster_id(),
            dir.join(CA_CERT).display(),
            issued.len()
        )?;
    } else {
        writeln!(
            out,
            "created the CA of cluster {:?}; keep {} off the nodes",
            ca.cluster_id(),
            dir.join(CA_KEY).display()
        )?;
    }
    let mut table = Table::new(&[
        ("role", Align::Left),
        ("name", Align::Left),
        ("certificate", Align::Left),
        ("key", Align::Left),
        ("expires", Align::Left),
    ]);
    if !reused {
        table.row([
            "ca".to_owned(),
            ca.cluster_id().to_owned(),
            dir.join(CA_CERT).display().to_string(),
            dir.join(CA_KEY).display().to_string(),
            String::new(),
        ]);
    }
    for (identity, (cert, key)) in issued.iter().zip(&files) {
        table.row([
            identity.role().to_string(),
            identity.node_id().to_owned(),
            cert.display().to_string(),
            key.display().to_string(),
            until(validity.not_after),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// A validity's end, as the rest of the CLI prints times.
fn until(t: SystemTime) -> String {
    let us = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    // To the second: validity is not kept finer.
    let t = walship_tools::text::timestamp_us(us);
    format!("{}Z", t.split('.').next().unwrap_or(&t))
}

fn files_of(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

fn read_bounded(p: &Path) -> Result<String, Failure> {
    let meta = fs::metadata(p).map_err(|e| fail("read", p, e))?;
    if !meta.is_file() || meta.len() > 16 << 20 {
        return Err(fail("read", p, "not a regular file of at most 16 MiB"));
    }
    fs::read_to_string(p).map_err(|e| fail("read", p, e))
}

fn renew(dir: &Path, names: &[String], days: u32, out: &mut dyn Write) -> Result<(), Failure> {
    check_names(names.iter().map(String::as_str))?;
    let (ca, _) = load_or_generate_ca(dir, None)?;
    let validity = Validity::days(days);
    let mut renewed = Vec::new();
    for name in names {
        let (cert, key) = files_of(dir, name);
        let old = CertInfo::from_pem(&read_bounded(&cert)?).map_err(|e| fail("", &cert, e))?;
        if old.peer.cluster_id != ca.cluster_id() || old.peer.node_id != *name {
            return Err(fail(
                "renew",
                &cert,
                format!(
                    "it is {}, not {name} of cluster {}",
                    old.peer,
                    ca.cluster_id()
                ),
            ));
        }
        let new = ca
            .issue(old.peer.role, name, validity)
            .map_err(|e| Failure::Error(format!("{name:?}: {e}")))?;
        renewed.push((new, cert, key, old));
    }
    prepare_dir(dir)?;
    for (new, cert, key, _) in &renewed {
        write_file(cert, new.cert_chain_pem(), CERT_MODE)?;
        write_file(key, new.key_pem(), KEY_MODE)?;
    }
    sync_dir(dir)?;
    let mut table = Table::new(&[
        ("role", Align::Left),
        ("name", Align::Left),
        ("certificate", Align::Left),
        ("was valid until", Align::Left),
        ("now until", Align::Left),
    ]);
    for (new, cert, _, old) in &renewed {
        table.row([
            new.role().to_string(),
            new.node_id().to_owned(),
            cert.display().to_string(),
            until(old.not_after),
            until(validity.not_after),
        ]);
    }
    writeln!(
        out,
        "renewed {} certificate(s); copy each over its node's tls.cert and tls.key (read again when they change, no restart)",
        renewed.len()
    )?;
    table.write(out)?;
    Ok(())
}

fn revoke(
    dir: &Path,
    names: &[String],
    certs: &[PathBuf],
    out: &mut dyn Write,
) -> Result<(), Failure> {
    if names.is_empty() && certs.is_empty() {
        return Err(Failure::Error(
            "name what to revoke: NAME… or --cert FILE".into(),
        ));
    }
    let (ca, _) = load_or_generate_ca(dir, None)?;
    let crl_path = dir.join(CRL);
    let (mut revoked, number) = if crl_path.exists() {
        read_revocation_list(&read_bounded(&crl_path)?).map_err(|e| fail("read", &crl_path, e))?
    } else {
        (Vec::new(), 0)
    };
    let files: Vec<PathBuf> = names
        .iter()
        .map(|n| files_of(dir, n).0)
        .chain(certs.iter().cloned())
        .collect();
    let mut table = Table::new(&[
        ("revoked", Align::Left),
        ("serial", Align::Left),
        ("certificate", Align::Left),
    ]);
    for f in &files {
        let info = CertInfo::from_pem(&read_bounded(f)?).map_err(|e| fail("", f, e))?;
        if info.peer.cluster_id != ca.cluster_id() {
            return Err(fail(
                "revoke",
                f,
                format!(
                    "it is of cluster {:?}, not {:?}",
                    info.peer.cluster_id,
                    ca.cluster_id()
                ),
            ));
        }
        if !revoked.iter().any(|r| r.serial == info.serial) {
            revoked.push(Revoked {
                serial: info.serial.clone(),
                at: SystemTime::now(),
            });
        }
        table.row([
            info.peer.to_string(),
            info.serial_hex(),
            f.display().to_string(),
        ]);
    }
    let number = number.checked_add(1).ok_or_else(|| {
        Failure::Error(format!(
            "{}: the list number is exhausted",
            crl_path.display()
        ))
    })?;
    let pem = ca
        .revocation_list(&revoked, number)
        .map_err(|e| Failure::Error(format!("the revocation list: {e}")))?;
    prepare_dir(dir)?;
    write_file(&crl_path, &pem, CERT_MODE)?;
    sync_dir(dir)?;
    writeln!(
        out,
        "{} now revokes {} certificate(s) (list number {number}); copy it to every node's `tls.crl`",
        crl_path.display(),
        revoked.len()
    )?;
    table.write(out)?;
    Ok(())
}

/// The rules the transport does not make because they are about file names: not empty,
/// not the CA's or the revocation list's name, not a hidden or option-like file, each
/// once. The character set is checked by issuing the certificate.
fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), Failure> {
    let mut seen = HashSet::new();
    for name in names {
        let bad = |why: &str| Err(Failure::Error(format!("invalid name {name:?}: {why}")));
        if name.is_empty() {
            return bad("empty (check the lists for a stray comma)");
        }
        if name == "ca" || name == "crl" {
            return bad("its files would be the CA's");
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return bad("must start with an ASCII letter or digit");
        }
        if !seen.insert(name) {
            return bad("given twice");
        }
    }
    Ok(())
}

/// The CA in `dir` if there is one (and whether it was reused), else a new one.
fn load_or_generate_ca(dir: &Path, cluster: Option<&str>) -> Result<(ClusterCa, bool), Failure> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            check_dir(dir)?;
            let ca = ClusterCa::from_pem(&read_bounded(&cert_path)?, &read_bounded(&key_path)?)
                .map_err(|e| Failure::Error(format!("load the CA in {}: {e}", dir.display())))?;
            if let Some(wanted) = cluster.filter(|c| *c != ca.cluster_id()) {
                return Err(Failure::Error(format!(
                    "{} is the CA of cluster {:?}, not {wanted:?}",
                    cert_path.display(),
                    ca.cluster_id()
                )));
            }
            Ok((ca, true))
        }
        (false, false) => {
            let cluster = cluster.ok_or_else(|| {
                Failure::Error(format!(
                    "--cluster is required: {} holds no CA yet",
                    dir.display()
                ))
            })?;
            let ca = ClusterCa::generate(cluster)
                .map_err(|e| Failure::Error(format!("create the cluster CA: {e}")))?;
            Ok((ca, false))
        }
        (has_cert, _) => {
            let (present, missing) = if has_cert {
                (&cert_path, &key_path)
            } else {
                (&key_path, &cert_path)
            };
            Err(Failure::Error(format!(
                "{} exists but {} does not: the CA is incomplete; restore it, or remove {} to \
                 create a new CA",
                present.display(),
                missing.display(),
                present.display()
            )))
        }
    }
}

/// Creates `dir` (mode 0700) if missing; refuses one that others could write into.
fn prepare_dir(dir: &Path) -> Result<(), Failure> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create", dir, e))?;
    }
    check_dir(dir)
}

/// Refuses a directory that is not ours or that the group or others may write: whoever
/// can write there can plant a symlink where a key will go or replace a certificate.
fn check_dir(dir: &Path) -> Result<(), Failure> {
    let meta = fs::metadata(dir).map_err(|e| fail("inspect", dir, e))?;
    if !meta.is_dir() {
        return Err(fail("use", dir, "not a directory"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Failure::Error(format!(
            "refusing to write keys into {}: it is writable by {} (mode {mode:04o}); \
             `chmod go-w` it or choose another directory",
            dir.display(),
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            }
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Failure::Error(format!(
            "refusing to write keys into {}: it belongs to uid {}, not to you (uid {me})",
            dir.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Writes `path` whole or not at all: a temporary file under a random name created with
/// `O_CREAT | O_EXCL` (so a planted symlink or file is never followed or reused) and
/// `mode`, fsynced, renamed over `path`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), Failure> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| fail("create a temporary file in", dir, e))?;
    tmp.write_all(contents.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| fail("write", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| fail("rename into place", path, e.error))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), Failure> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("fsync directory", dir, e))
}
