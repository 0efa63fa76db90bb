//! A bandwidth-limited link between two network namespaces on this machine, for the
//! replication benchmark's "1 Gbit/s link" rows.
//!
//! [`Link::create`] (root only) makes two namespaces `wsb-l-<pid>-<n>` (leader) and
//! `wsb-f-<pid>-<n>` (follower), a veth pair between them with addresses `10.a.b.1/30`
//! and `10.a.b.2/30` (derived from the pid, to avoid clashing with a concurrent run), and
//! a shaping qdisc on *both* veth ends (`tbf` by default, or `netem rate`).
//! [`Link::bind_udp`] binds a UDP socket inside either namespace from a dedicated thread
//! (`setns(CLONE_NEWNET)` only moves that thread), so one process can run both ends;
//! the socket stays in its namespace whichever thread uses it later.
//!
//! Everything is torn down in `Drop`: the namespaces are deleted (which deletes the veth
//! ends in them), and a veth end that never left the root namespace is deleted too.
//! Teardown also runs when creation fails half way.

use std::fmt;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// An error setting up or using the link: the failing command and what it printed.
#[derive(Debug)]
pub struct NetnsError(pub String);

impl fmt::Display for NetnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetnsError {}

type Result<T> = std::result::Result<T, NetnsError>;

/// How the link's rate is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shaper {
    /// `tc qdisc add dev D root tbf rate R burst 256kb latency 50ms`.
    Tbf,
    /// `tc qdisc add dev D root netem rate R limit 10000`.
    Netem,
}

impl std::str::FromStr for Shaper {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Shaper, String> {
        match s {
            "tbf" => Ok(Shaper::Tbf),
            "netem" => Ok(Shaper::Netem),
            _ => Err(format!("unknown shaper {s:?}: expected tbf or netem")),
        }
    }
}

impl fmt::Display for Shaper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shaper::Tbf => "tbf",
            Shaper::Netem => "netem",
        })
    }
}

/// Which end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The leader's namespace, address `.1`.
    Leader,
    /// The follower's namespace, address `.2`.
    Follower,
}

/// Why the link cannot be made here, or `None` if it probably can (root, `ip` and `tc`
/// present, `/var/run/netns` usable).
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("needs root (euid {euid})"));
    }
    for tool in ["ip", "tc"] {
        match Command::new(tool).arg("-V").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Some(format!("`{tool} -V` failed: {}", out.status)),
            Err(e) => return Some(format!("`{tool}` not runnable: {e}")),
        }
    }
    None
}

/// Deletes namespaces left by runs that were killed before their `Drop` ran (names
/// `wsb-l-<pid>-<n>` / `wsb-f-<pid>-<n>` whose process no longer exists); returns their
/// names.
pub fn reap_stale() -> Result<Vec<String>> {
    let list = run("ip", &["netns", "list"])?;
    let mut reaped = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name
            .strip_prefix("wsb-l-")
            .or_else(|| name.strip_prefix("wsb-f-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            run("ip", &["netns", "delete", name])?;
            reaped.push(name.to_owned());
        }
    }
    Ok(reaped)
}

/// A shaped veth link between two network namespaces; see the module docs.
#[derive(Debug)]
pub struct Link {
    leader_ns: String,
    follower_ns: String,
    leader_dev: String,
    follower_dev: String,
    leader_ip: Ipv4Addr,
    follower_ip: Ipv4Addr,
    rate: String,
    shaper: Shaper,
    /// Namespaces created so far (deleted in Drop).
    created_ns: Vec<String>,
    /// Whether the veth pair was created (its leader end is deleted in Drop if it is
    /// still in the root namespace).
    created_veth: bool,
}

/// Distinguishes several links made by one process.
static SEQ: AtomicU32 = AtomicU32::new(0);

impl Link {
    /// Creates the namespaces, the veth pair, addresses and the shaping qdisc on both
    /// ends at `rate` (a tc rate such as `1gbit`).
    pub fn create(rate: &str, shaper: Shaper) -> Result<Link> {
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // 10.a.b.c/30 from the pid and sequence number: 2^14 distinct /30s.
        let tag = pid.wrapping_mul(31).wrapping_add(n) & 0x3FFF;
        let a = 200 + ((tag >> 8) & 0x3F) as u8 % 50;
        let b = (tag & 0xFF) as u8;
        let c = (((pid >> 14) ^ n) & 0x3F) as u8 * 4;
        let mut link = Link {
            leader_ns: format!("wsb-l-{pid}-{n}"),
            follower_ns: format!("wsb-f-{pid}-{n}"),
            // Interface names are at most 15 bytes.
            leader_dev: format!("wsl{:x}{n}", pid & 0xFF_FFFF),
            follower_dev: format!("wsf{:x}{n}", pid & 0xFF_FFFF),
            leader_ip: Ipv4Addr::new(10, a, b, c + 1),
            follower_ip: Ipv4Addr::new(10, a, b, c + 2),
            rate: rate.to_owned(),
            shaper,
            created_ns: Vec::new(),
            created_veth: false,
        };
        link.setup()?;
        Ok(link)
    }

    fn setup(&mut self) -> Result<()> {
        for ns in [self.leader_ns.clone(), self.follower_ns.clone()] {
            run("ip", &["netns", "add", &ns])?;
            self.created_ns.push(ns);
        }
        run(
            "ip",
            &[
                "link",
                "add",
                &self.leader_dev,
                "type",
                "veth",
                "peer",
                "name",
                &self.follower_dev,
            ],
        )?;
        self.created_veth = true;
        let ends = [
            (&self.leader_ns, &self.leader_dev, self.leader_ip),
            (&self.follower_ns, &self.follower_dev, self.follower_ip),
        ];
        for (ns, dev, ip) in ends {
            run("ip", &["link", "set", dev, "netns", ns])?;
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/30"), "dev", dev],
            )?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", ns, "link", "set", dev, "up"])?;
            let mut tc = vec!["-n", ns, "qdisc", "add", "dev", dev, "root"];
            match self.shaper {
                Shaper::Tbf => tc.extend([
                    "tbf", "rate", &self.rate, "burst", "256kb", "latency", "50ms",
                ]),
                Shaper::Netem => tc.extend(["netem", "rate", &self.rate, "limit", "10000"]),
            }
            run("tc", &tc)?;
        }
        Ok(())
    }

    /// The address of `side`'s end.
    pub fn ip(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::Leader => self.leader_ip,
            Side::Follower => self.follower_ip,
        }
    }

    /// The namespace name of `side`.
    pub fn namespace(&self, side: Side) -> &str {
        match side {
            Side::Leader => &self.leader_ns,
            Side::Follower => &self.follower_ns,
        }
    }

    /// The shaping rate, as given to tc.
    pub fn rate(&self) -> &str {
        &self.rate
    }

    /// The shaping qdisc.
    pub fn shaper(&self) -> Shaper {
        self.shaper
    }

    /// A UDP socket bound to `side`'s address (port chosen by the kernel) inside that
    /// side's namespace.
    pub fn bind_udp(&self, side: Side) -> Result<UdpSocket> {
        let addr = SocketAddr::V4(SocketAddrV4::new(self.ip(side), 0));
        self.within(side, move || UdpSocket::bind(addr))
            .map_err(|e| NetnsError(format!("bind {addr} in {}: {e}", self.namespace(side))))
    }

    /// A TCP connection to `to` made from inside `side`'s namespace.
    pub fn connect_tcp(&self, side: Side, to: SocketAddr) -> Result<TcpStream> {
        self.within(side, move || TcpStream::connect(to))
            .map_err(|e| {
                NetnsError(format!(
                    "connect to {to} from {}: {e}",
                    self.namespace(side)
                ))
            })
    }

    /// Runs `f` on a short-lived thread moved into `side`'s namespace: the sockets it
    /// makes stay in that namespace whichever thread uses them later.
    fn within<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.namespace(side));
        let handle = std::thread::Builder::new()
            .name("wsb-setns".into())
            .spawn(move || -> Result<T> {
                let ns = File::open(&path).map_err(|e| NetnsError(format!("open {path}: {e}")))?;
                // SAFETY: `ns` is an open namespace file descriptor for the whole call;
                // setns only changes the network namespace of this (short-lived) thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(NetnsError(format!(
                        "setns({path}): {}",
                        std::io::Error::last_os_error()
                    )));
                }
                f().map_err(|e| NetnsError(e.to_string()))
            })
            .map_err(|e| NetnsError(format!("spawn setns thread: {e}")))?;
        handle
            .join()
            .map_err(|_| NetnsError("setns thread panicked".into()))?
    }

    /// The qdisc statistics of `side`'s veth end (`tc -s qdisc show`), for the report.
    pub fn qdisc_stats(&self, side: Side) -> Result<String> {
        let (ns, dev) = match side {
            Side::Leader => (&self.leader_ns, &self.leader_dev),
            Side::Follower => (&self.follower_ns, &self.follower_dev),
        };
        run("tc", &["-n", ns, "-s", "qdisc", "show", "dev", dev])
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in self.created_ns.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "delete", &ns]) {
                eprintln!("warning: {e}");
            }
        }
        if self.created_veth {
            // Only still present if it never moved into a namespace; ignore "not found".
            let _ = Command::new("ip")
                .args(["link", "delete", &self.leader_dev])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Runs `prog args…`, returning its stdout, or an error with the command and stderr.
fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| NetnsError(format!("`{prog} {}`: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Creates a link, exchanges a datagram across it, and checks the teardown. Skipped
    /// (passes with a note) when not root.
    #[test]
    fn link_carries_udp_and_is_torn_down() {
        if let Some(reason) = unavailable_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
        let link = match Link::create("100mbit", Shaper::Tbf) {
            Ok(link) => link,
            Err(e) => panic!("{e}"),
        };
        let names = [
            link.namespace(Side::Leader).to_owned(),
            link.namespace(Side::Follower).to_owned(),
        ];
        let a = link.bind_udp(Side::Leader).map_err(|e| e.to_string());
        let b = link.bind_udp(Side::Follower).map_err(|e| e.to_string());
        let (a, b) = (
            a.unwrap_or_else(|e| panic!("{e}")),
            b.unwrap_or_else(|e| panic!("{e}")),
        );
        let to = a.local_addr().map_err(|e| e.to_string());
        let to = to.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(to.ip(), link.ip(Side::Leader));
        assert!(b.send_to(b"ping", to).is_ok());
        let mut buf = [0u8; 16];
        let _ = a.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let got = a.recv_from(&mut buf).map_err(|e| e.to_string());
        let (n, from) = got.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from.ip(), link.ip(Side::Follower));
        drop(link);
        let list = run("ip", &["netns", "list"]).unwrap_or_default();
        for name in names {
            assert!(!list.contains(&name), "{name} left behind: {list}");
        }
    }
}
