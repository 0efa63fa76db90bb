//! The references replication is judged against, measured between the same two
//! processes and on the same path: raw quinn (one stream, the project's endpoint,
//! transport and mutual-TLS configs) and one plain TCP connection. This process sends;
//! a child process (`roles::quic_recv`, `roles::tcp_recv`) receives.

use std::net::SocketAddr;
use std::time::Duration;

use walship_bench::child::{process_cpu_ns, Child};
use walship_bench::rawquic::{self, Received};
use walship_bench::{rawtcp, Res};

use crate::{Ctx, MachineMeter, Net};

/// Which reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Quic,
    Tcp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Quic => "raw quinn, 1 stream",
            Kind::Tcp => "TCP, 1 connection",
        }
    }
}

/// One reference transfer's figures.
#[derive(Debug, Clone)]
pub struct RefRun {
    pub bytes: u64,
    pub secs: f64,
    /// UDP bytes the sender put on the wire (raw quinn only; TCP: the stream bytes).
    pub wire_bytes: u64,
    pub lost_packets: u64,
    pub mtu: u16,
    /// CPU seconds of the sending and the receiving process.
    pub sender_cpu: f64,
    pub receiver_cpu: f64,
    /// CPUs other processes used during the transfer.
    pub others: f64,
}

impl RefRun {
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / walship_bench::MB / self.secs.max(1e-9)
    }
    pub fn sender_s_per_gb(&self) -> f64 {
        self.sender_cpu / (self.bytes as f64 / 1e9).max(1e-12)
    }
    pub fn receiver_s_per_gb(&self) -> f64 {
        self.receiver_cpu / (self.bytes as f64 / 1e9).max(1e-12)
    }
}

fn parse_received(reply: &str) -> Res<(Received, f64)> {
    let v = walship_bench::child::numbers(reply, 4, "receiver's reply")?;
    Ok((
        Received {
            bytes: v[0],
            start_ns: v[1],
            end_ns: v[2],
        },
        v[3] as f64 / 1e9,
    ))
}

/// One transfer of every frame of `ctx` over `kind`, receiver in a child process.
pub fn measure(ctx: &Ctx, rt: &tokio::runtime::Runtime, net: &Net<'_>, kind: Kind) -> Res<RefRun> {
    let ip = net.follower_ip().to_string();
    let node = &ctx.follower_nodes[0];
    let certs = ctx.certs.path().display().to_string();
    let args: Vec<String> = match kind {
        Kind::Quic => vec!["child".into(), "quic-recv".into(), certs, node.clone(), ip],
        Kind::Tcp => vec!["child".into(), "tcp-recv".into(), ip],
    };
    let (mut child, ready) = Child::spawn(kind.name(), net.follower_ns(), &args)?;
    let meter = MachineMeter::start();
    let run = match kind {
        Kind::Quic => {
            let server = {
                let _in_rt = rt.enter();
                rawquic::server(&ctx.cluster, net.leader_udp()?)?
            };
            let addr = server.local_addr()?;
            let cpu0 = process_cpu_ns();
            let sender = rt.spawn(rawquic::send(server, ctx.frames.clone()));
            let reply = child.call(&format!("connect {addr}"));
            let sent = rt.block_on(sender)?;
            let sender_cpu = process_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
            let (got, receiver_cpu) = parse_received(&reply?)?;
            let sent = sent?;
            let q = rawquic::RawQuic::from_parts(&got, &sent);
            RefRun {
                bytes: q.bytes,
                secs: q.secs,
                wire_bytes: q.wire_bytes,
                lost_packets: q.lost_packets,
                mtu: q.mtu,
                sender_cpu,
                receiver_cpu,
                others: 0.0,
            }
        }
        Kind::Tcp => {
            let port: u16 = ready
                .parse()
                .map_err(|e| format!("tcp-recv port {ready:?}: {e}"))?;
            let to = SocketAddr::new(net.follower_ip(), port);
            child.send("wait")?;
            let stream = net.tcp_connect(to)?;
            let cpu0 = process_cpu_ns();
            rawtcp::send(stream, &ctx.frames)?;
            let sender_cpu = process_cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
            let (got, receiver_cpu) = parse_received(&child.reply()?)?;
            RefRun {
                bytes: got.bytes,
                secs: got.end_ns.saturating_sub(got.start_ns) as f64 / 1e9,
                wire_bytes: got.bytes,
                lost_packets: 0,
                mtu: 0,
                sender_cpu,
                receiver_cpu,
                others: 0.0,
            }
        }
    };
    child.finish(Duration::from_secs(10))?;
    let ours = run.sender_cpu + run.receiver_cpu;
    Ok(RefRun {
        others: meter.others(ours),
        ..run
    })
}
