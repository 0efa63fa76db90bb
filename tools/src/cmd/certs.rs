//! `walship certs`: the cluster CA and one certificate per node, as files.
//!
//! Certificates come from `walship_transport::tls`, the same code the nodes use to
//! check each other, so what this writes is exactly what `Security::mutual_tls` loads.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use walship_tools::outcome::Failure;
use walship_tools::text::{Align, Table};
use walship_transport::tls::{ClusterCa, NodeIdentity};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
/// Private keys: readable by their owner only.
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Create a cluster CA and node certificates for mutual TLS
///
/// Writes into --out: the cluster CA (ca.pem, ca.key) and, for each node, <node>.pem
/// (its certificate chain) and <node>.key (its private key). Key files are mode 0600;
/// a directory it creates is mode 0700.
///
/// If --out already holds ca.pem and ca.key, that CA issues the new nodes: this is how
/// a node is added to a running cluster. An existing CA is never replaced (that would
/// orphan every certificate it issued); to start over, remove ca.pem and ca.key.
///
/// Node names: 1 to 63 ASCII letters, digits, '-', '_' or '.', starting with a letter or
/// digit, not "ca", each once. A node's certificate names it as DNS name <node> and URI
/// walship://<cluster>/<node>; peers must present the name they claim.
///
/// Existing node files are not overwritten unless --force is given; nothing is written
/// unless every name is valid.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct Args {
    /// Directory to write into (created if missing)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Cluster name, recorded in every certificate (required unless --out holds a CA)
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// Node names, comma-separated
    #[arg(long, value_name = "A,B,…", value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Overwrite existing node files (re-issue those nodes)
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), Failure> {
    check_names(&args.nodes)?;
    let (ca, reused) = load_or_generate_ca(&args.out, args.cluster.as_deref())?;
    // Issue every certificate before writing anything: a bad name writes nothing.
    let nodes = args
        .nodes
        .iter()
        .map(|name| {
            ca.issue_node(name)
                .map_err(|e| Failure::Error(format!("node {name:?}: {e}")))
        })
        .collect::<Result<Vec<NodeIdentity>, Failure>>()?;
    let node_files: Vec<(PathBuf, PathBuf)> = args
        .nodes
        .iter()
        .map(|n| {
            (
                args.out.join(format!("{n}.pem")),
                args.out.join(format!("{n}.key")),
            )
        })
        .collect();
    if !args.force {
        let existing: Vec<String> = node_files
            .iter()
            .flat_map(|(c, k)| [c, k])
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Failure::Error(format!(
                "refusing to overwrite {} (pass --force to re-issue these nodes)",
                existing.join(", ")
            )));
        }
    }

    let dir = &args.out;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::Error(format!("create {}: {e}", dir.display())))?;
    if !reused {
        write_file(&dir.join(CA_CERT), ca.cert_pem(), CERT_MODE)?;
        write_file(&dir.join(CA_KEY), &ca.key_pem(), KEY_MODE)?;
    }
    for (identity, (cert, key)) in nodes.iter().zip(&node_files) {
        let (chain_pem, key_pem) = identity.to_pem();
        write_file(cert, &chain_pem, CERT_MODE)?;
        write_file(key, &key_pem, KEY_MODE)?;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Failure::Error(format!("fsync directory {}: {e}", dir.display())))?;

    if reused {
        writeln!(
            out,
            "reused the CA of cluster {:?} in {} to issue {} node certificate(s)",
            ca.cluster_id(),
            dir.join(CA_CERT).display(),
            nodes.len()
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
        ("", Align::Left),
        ("name", Align::Left),
        ("certificate", Align::Left),
        ("key", Align::Left),
    ]);
    if !reused {
        table.row([
            "ca".to_owned(),
            ca.cluster_id().to_owned(),
            dir.join(CA_CERT).display().to_string(),
            dir.join(CA_KEY).display().to_string(),
        ]);
    }
    for (identity, (cert, key)) in nodes.iter().zip(&node_files) {
        table.row([
            "node".to_owned(),
            identity.node_id().to_owned(),
            cert.display().to_string(),
            key.display().to_string(),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// The rules the transport does not make because they are about file names: not empty,
/// not the CA's name, not a hidden or option-like file, each once. The character set is
/// checked by issuing the certificate.
fn check_names(nodes: &[String]) -> Result<(), Failure> {
    let mut seen = HashSet::new();
    for name in nodes {
        let bad = |why: &str| Err(Failure::Error(format!("invalid node name {name:?}: {why}")));
        if name.is_empty() {
            return bad("empty (check --nodes for a stray comma)");
        }
        if name == "ca" {
            return bad("its files would be the CA's");
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return bad("must start with an ASCII letter or digit");
        }
        if !seen.insert(name.as_str()) {
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
            let read = |p: &Path| {
                fs::read_to_string(p)
                    .map_err(|e| Failure::Error(format!("read {}: {e}", p.display())))
            };
            let ca = ClusterCa::from_pem(&read(&cert_path)?, &read(&key_path)?)
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

/// Writes `path` whole or not at all: a temporary file with `mode`, fsynced, renamed over
/// `path`. (The engine's `atomic_write` leaves the mode to the umask, which for a private
/// key is not enough.)
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), Failure> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        Failure::Error(format!("{what} {}: {e}", p.display()))
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| fail("create", &tmp, e))?;
    // `mode` applies only when the file is created; a leftover temporary file keeps its own.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(contents.as_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(|e| fail("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| fail("rename into place", path, e))
}
