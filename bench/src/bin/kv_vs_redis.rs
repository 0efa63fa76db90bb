//! walship-kv against Redis, same machine, same clients, one run.
//!
//! Starts, as separate processes on loopback: a Redis primary and one replica
//! (`appendonly yes`, `appendfsync always`), and a walship-kv leader and one follower
//! (`walship-kv serve`; sync `ANY 1`). Then, against each:
//! - `redis-benchmark -t set` with 50 clients: Redis with `appendfsync always` against
//!   walship-kv at `local` (fsync before the reply, as `appendfsync always`);
//! - a closed-loop client (this program, N threads, one connection each) doing `SET` then
//!   `WAIT 1 <timeout>` per operation, with HDR histograms: Redis against walship-kv at
//!   `remote-flush` (the `SET` reply waits for the follower's flush; `WAIT 1` then finds
//!   it flushed) and at `local` (as an unmodified Redis client has it: `WAIT 1` itself
//!   waits for the follower's flush);
//! - `redis-benchmark -t get` on each replica, over keys written first.
//!
//! Prints a table with the ratios the issue's targets use. Needs `redis-server` and
//! `redis-benchmark` on the PATH and a release build of `walship-kv`
//! (`cargo build --release -p walship-kv`).
//!
//! ```text
//! cargo run --release -p walship-bench --bin kv_vs_redis -- [--requests 100000] [--seconds 10] [--clients 1,50]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Debug, Parser)]
struct Args {
    /// Requests per redis-benchmark run
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Seconds per closed-loop run
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Closed-loop client counts
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    clients: Vec<usize>,
    /// walship-kv durabilities for the `SET` + `WAIT 1` rows: `remote-flush` (the reply
    /// waits for the follower; `WAIT` finds it done) and `local` (what an unmodified
    /// Redis client gets: `WAIT` itself waits for the follower's flush)
    #[arg(long, value_delimiter = ',', default_value = "remote-flush,local")]
    wait_levels: Vec<String>,
    /// redis-benchmark's connections
    #[arg(long, default_value_t = 50)]
    bench_clients: usize,
    /// The walship-kv binary
    #[arg(long)]
    kv_bin: Option<PathBuf>,
    /// Where the data goes (default: a temporary directory; the disk is what is measured)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The walship-kv nodes' `replication.compression_level` (0: ship raw; absent: the
    /// node's default, adaptive from level 1)
    #[arg(long)]
    kv_compression_level: Option<i32>,
}

/// A child process killed and reaped when dropped.
struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first, for a clean shutdown; then reap.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.0),
            rustix::process::Signal::TERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        eprintln!("{} did not stop on SIGTERM: killed", self.1);
    }
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp_port() -> Res<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn connect(port: u16) -> Res<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get_connection() {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("connecting to port {port}: {e}").into()),
        }
    }
}

/// Waits until `SET` on `port` succeeds (a leader confirmed, a primary up).
fn until_writable(port: u16) -> Res<()> {
    let mut con = connect(port)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match redis::cmd("SET")
            .arg("__ready")
            .arg("1")
            .query::<String>(&mut con)
        {
            Ok(_) => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("port {port} takes no writes: {e}").into()),
        }
    }
}

fn redis_server(dir: &Path, port: u16, primary: Option<u16>) -> Res<Proc> {
    std::fs::create_dir_all(dir)?;
    let mut args = vec![
        "--port".to_owned(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "always".into(),
        "--save".into(),
        String::new(),
        "--daemonize".into(),
        "no".into(),
        "--logfile".into(),
        dir.join("redis.log").display().to_string(),
    ];
    if let Some(p) = primary {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
    }
    let child = Command::new("redis-server")
        .args(&args)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    Ok(Proc(child, "redis-server"))
}

/// Certificates and configurations for a two-node walship-kv cluster in `dir`.
fn kv_configs(dir: &Path, resp: [u16; 2], compression: Option<i32>) -> Res<[PathBuf; 2]> {
    std::fs::create_dir_all(dir)?;
    let ca = walship_transport::tls::ClusterCa::generate("kv-bench")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    let repl = [free_udp_port()?, free_udp_port()?];
    let mut out = Vec::new();
    for (i, id) in ["n1", "n2"].into_iter().enumerate() {
        let cert = ca.issue_node(id)?;
        std::fs::write(dir.join(format!("{id}.pem")), cert.cert_chain_pem())?;
        std::fs::write(dir.join(format!("{id}.key")), cert.key_pem())?;
        let cfg = format!(
            r#"node_id = "{id}"
data_dir = "data-{id}"
listen = "127.0.0.1:{}"
admin = "127.0.0.1:{}"
[tls]
ca = "ca.pem"
cert = "{id}.pem"
key = "{id}.key"
[replication]
sync = "ANY 1 (*)"
{}[coordinator]
kind = "static"
leader = "n1"
peers = {{ n1 = "127.0.0.1:{}", n2 = "127.0.0.1:{}" }}
[kv]
listen = "127.0.0.1:{}"
durability = "local"
"#,
            repl[i],
            free_port()?,
            compression.map_or(String::new(), |l| format!("compression_level = {l}\n")),
            repl[0],
            repl[1],
            resp[i]
        );
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(&path, cfg)?;
        out.push(path);
    }
    Ok([out[0].clone(), out[1].clone()])
}

fn kv_node(bin: &Path, config: &Path) -> Res<Proc> {
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(Proc(child, "walship-kv"))
}

/// One redis-benchmark run: requests per second, p50 and p99 in ms.
fn redis_benchmark(port: u16, test: &str, requests: u64, clients: usize) -> Res<(f64, f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", test])
        .args(["-n", &requests.to_string(), "-c", &clients.to_string()])
        .args(["-r", "10000", "-d", "64", "--csv"])
        .output()
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("\"{}\"", test.to_uppercase())))
        .ok_or_else(|| format!("redis-benchmark printed no {test} line: {text}"))?;
    let f: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|v| v.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    if f.len() < 6 {
        return Err(format!("redis-benchmark line {line:?}").into());
    }
    Ok((f[0], f[3], f[5]))
}

/// The closed-loop client: `clients` threads, each `SET k v` then `WAIT 1 5000` for
/// `seconds`. Operations per second and the histogram of one operation's latency (µs).
fn set_wait(
    port: u16,
    clients: usize,
    seconds: u64,
    durability: Option<&str>,
) -> Res<(f64, Histogram<u64>)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let durability = durability.map(str::to_owned);
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                let mut con = connect(port).map_err(|e| e.to_string())?;
                if let Some(d) = durability {
                    redis::cmd("WALSHIP.DURABILITY")
                        .arg(d)
                        .query::<String>(&mut con)
                        .map_err(|e| e.to_string())?;
                }
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .map_err(|e| e.to_string())?;
                let value = vec![b'x'; 64];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let key = format!("w:{t}:{}", n % 1000);
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .query::<String>(&mut con)
                        .map_err(|e| e.to_string())?;
                    let acked: i64 = redis::cmd("WAIT")
                        .arg(1)
                        .arg(5000)
                        .query(&mut con)
                        .map_err(|e| e.to_string())?;
                    if acked < 1 {
                        return Err(format!(
                            "WAIT 1 returned {acked}: the replica did not acknowledge in 5 s"
                        ));
                    }
                    h.record(started.elapsed().as_micros() as u64)
                        .map_err(|e| e.to_string())?;
                    n += 1;
                }
                Ok((n, h))
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in threads {
        let (n, h) = t.join().map_err(|_| "client thread panicked")??;
        total += n;
        hist.add(h)?;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), hist))
}

fn main() -> Res<()> {
    let args = Args::parse();
    let root = env!("CARGO_MANIFEST_DIR");
    let kv_bin = args
        .kv_bin
        .clone()
        .unwrap_or_else(|| Path::new(root).join("../target/release/walship-kv"));
    if !kv_bin.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p walship-kv",
            kv_bin.display()
        )
        .into());
    }
    let tmp = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let dir = tmp.path();
    let (rp, rr) = (free_port()?, free_port()?);
    let kv_ports = [free_port()?, free_port()?];
    let _redis = redis_server(&dir.join("redis-primary"), rp, None)?;
    let _replica = redis_server(&dir.join("redis-replica"), rr, Some(rp))?;
    let configs = kv_configs(&dir.join("kv"), kv_ports, args.kv_compression_level)?;
    let _kv1 = kv_node(&kv_bin, &configs[0])?;
    let _kv2 = kv_node(&kv_bin, &configs[1])?;
    until_writable(rp)?;
    until_writable(kv_ports[0])?;
    // The Redis replica is in sync once WAIT 1 counts it.
    let mut con = connect(rp)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis::cmd("WAIT").arg(1).arg(100).query::<i64>(&mut con)? < 1 {
        if Instant::now() > deadline {
            return Err("the Redis replica never synced".into());
        }
    }
    let mut con = connect(kv_ports[0])?;
    while redis::cmd("WAIT").arg(1).arg(100).query::<i64>(&mut con)? < 1 {
        if Instant::now() > deadline {
            return Err("the walship-kv follower never connected".into());
        }
    }
    println!(
        "machine: {} cores; data in {}",
        std::thread::available_parallelism()?.get(),
        dir.display()
    );
    println!();
    println!("| workload | Redis 7 | walship-kv | ratio (kv / Redis) |");
    println!("| --- | ---: | ---: | ---: |");
    // SET, 50 clients: appendfsync always against local.
    let r = redis_benchmark(rp, "set", args.requests, args.bench_clients)?;
    let k = redis_benchmark(kv_ports[0], "set", args.requests, args.bench_clients)?;
    println!(
        "| redis-benchmark SET, {} clients, Redis `appendfsync always` / kv `local`: ops/s (p50 / p99 ms) | {:.0} ({:.2} / {:.2}) | {:.0} ({:.2} / {:.2}) | {:.2}× |",
        args.bench_clients, r.0, r.1, r.2, k.0, k.1, k.2, k.0 / r.0
    );
    for &clients in &args.clients {
        let (r_ops, r_h) = set_wait(rp, clients, args.seconds, None)?;
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        for level in &args.wait_levels {
            let (k_ops, k_h) = set_wait(kv_ports[0], clients, args.seconds, Some(level))?;
            println!(
                "| SET + WAIT 1, {clients} clients, kv at `{level}`: ops/s (p50 / p99 / p99.9 ms) | {r_ops:.0} ({:.2} / {:.2} / {:.2}) | {k_ops:.0} ({:.2} / {:.2} / {:.2}) | {:.2}× (p99 {:.2}×) |",
                ms(&r_h, 0.5), ms(&r_h, 0.99), ms(&r_h, 0.999),
                ms(&k_h, 0.5), ms(&k_h, 0.99), ms(&k_h, 0.999),
                k_ops / r_ops, ms(&k_h, 0.99) / ms(&r_h, 0.99),
            );
        }
    }
    let r = redis_benchmark(rr, "get", args.requests, args.bench_clients)?;
    let k = redis_benchmark(kv_ports[1], "get", args.requests, args.bench_clients)?;
    println!(
        "| redis-benchmark GET on the replica, {} clients: ops/s (p50 / p99 ms) | {:.0} ({:.2} / {:.2}) | {:.0} ({:.2} / {:.2}) | {:.2}× |",
        args.bench_clients, r.0, r.1, r.2, k.0, k.1, k.2, k.0 / r.0
    );
    Ok(())
}
