//! The benchmark's Markdown report: every measurement, CPU per GB by process and
//! component, and the targets with PASS/MISS.

use std::fmt::Write as _;
use std::time::Duration;

use walship_bench::{median, MB};

use crate::refs::{Kind, RefRun};
use crate::replicate::ReplRun;
use crate::{Ctx, Mode, Results, Zstd};

/// Median, minimum and maximum of `f` over `xs`, or `None` for an empty list.
fn stats<T>(xs: &[T], f: impl Fn(&T) -> f64) -> Option<(f64, f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let v: Vec<f64> = xs.iter().map(f).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((median(&v), lo, hi))
}

fn med<T>(xs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    stats(xs, f).map_or(f64::NAN, |s| s.0)
}

fn spread(s: Option<(f64, f64, f64)>, n: usize) -> String {
    match s {
        Some((_, lo, hi)) if n > 1 => format!("{lo:.0}–{hi:.0} over {n} reps"),
        _ => String::new(),
    }
}

/// The non-empty notes, joined with "; ".
fn join_notes(notes: Vec<String>) -> String {
    notes
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The mean of `f` over a run's followers.
fn fmean(r: &ReplRun, f: fn(&crate::replicate::ProcCpu) -> f64) -> f64 {
    r.followers.iter().map(f).sum::<f64>() / r.followers.len().max(1) as f64
}

fn others_note(others: f64) -> String {
    if others.is_finite() && others > 0.05 {
        format!("other processes {others:.1} CPUs")
    } else {
        String::new()
    }
}

fn path_name(res: &Results, net: u8) -> String {
    if net == 0 {
        "loopback".into()
    } else {
        format!("{} link", res.link_desc)
    }
}

pub fn render(ctx: &Ctx, res: &Results, took: Duration) -> String {
    let mut s = String::new();
    let a = &ctx.args;
    let data = &ctx.data;
    let _ = writeln!(s, "# walship replication throughput\n");
    let _ = writeln!(
        s,
        "{} MiB of WAL-like JSON rows per measurement ({} rows, mean {:.0} B, seed {}, \
         appended in ~{} KiB batches); zstd level {}; {} KiB frames; {} MiB segments; \
         {} repetition(s), medians (A B A B interleaved); leader and every receiver in \
         separate processes; run took {:.0} s.\n",
        ctx.mib,
        data.rows,
        data.payload_bytes as f64 / data.rows.max(1) as f64,
        a.seed,
        a.batch_bytes >> 10,
        a.zstd_level,
        a.frame_bytes >> 10,
        a.segment_mib,
        ctx.reps,
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| measurement | path | zstd | followers | log MB/s | wire MB/s | wire / log | \
         sender CPU s/GB | receiver CPU s/GB | notes |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    if let Some(z) = &res.zstd {
        let mb = |t: &f64| z.input_bytes as f64 / MB / t;
        let range = stats(&z.compress_secs, mb);
        let _ = writeln!(
            s,
            "| zstd compress, 1 core | memory | {} | | {:.0} | {:.0} | {:.3} | {:.2} | {:.2} | {} |",
            z.level,
            z.compress_mb_s(),
            z.compress_mb_s() / z.ratio(),
            1.0 / z.ratio(),
            1e3 / z.compress_mb_s(),
            1e3 / z.decompress_mb_s(),
            join_notes(vec![
                format!(
                    "ratio {:.2}×; decompress {:.0} MB/s; {} KiB frames; CPU s/GB: compress, decompress",
                    z.ratio(),
                    z.decompress_mb_s(),
                    z.frame_bytes >> 10
                ),
                spread(range, z.compress_secs.len()).replace("reps", "passes"),
            ])
        );
    }
    for net in [0u8, 1] {
        if net == 0 && a.no_loopback {
            continue;
        }
        let path = path_name(res, net);
        if net == 1 {
            if let Some(reason) = &res.link_skipped {
                let _ = writeln!(
                    s,
                    "| references and replication | {path} | | | skipped | | | | | {reason} |"
                );
                continue;
            }
        }
        for kind in [Kind::Quic, Kind::Tcp] {
            let Some(runs) = res.ref_runs(net, kind) else {
                continue;
            };
            let st = stats(runs, RefRun::mb_s);
            let lost: u64 = runs.iter().map(|r| r.lost_packets).sum();
            let mtu = runs.last().map_or(0, |r| r.mtu);
            let note = match kind {
                Kind::Quic => format!("wire = UDP bytes; MTU {mtu}; {lost} packets lost in all"),
                Kind::Tcp => "wire = stream bytes".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {path} | off | 1 | {:.0} | {:.0} | {:.3} | {:.2} | {:.2} | {} |",
                kind.name(),
                st.map_or(0.0, |x| x.0),
                med(runs, |r| r.wire_bytes as f64 / MB / r.secs.max(1e-9)),
                med(runs, |r| r.wire_bytes as f64 / r.bytes.max(1) as f64),
                med(runs, RefRun::sender_s_per_gb),
                med(runs, RefRun::receiver_s_per_gb),
                join_notes(vec![
                    note,
                    others_note(med(runs, |r| r.others)),
                    spread(st, runs.len())
                ])
            );
        }
        for mode in [Mode::Live, Mode::CatchUp] {
            if mode == Mode::CatchUp && a.no_catchup {
                continue;
            }
            let counts = if net == 0 {
                ctx.followers.clone()
            } else {
                vec![1]
            };
            for &n in &counts {
                for &zstd in &a.zstd {
                    let z = zstd.label(a);
                    let Some(runs) = res.repl_runs((net, mode, zstd, n)) else {
                        let why = res.repl_error.as_deref().unwrap_or("not measured");
                        let _ = writeln!(
                            s,
                            "| replication, {} | {path} | {z} | {n} | not measured | | | | | {} |",
                            mode.name(),
                            why.replace('|', "/")
                        );
                        continue;
                    };
                    let st = stats(runs, ReplRun::log_mb_s);
                    let mut notes = vec![format!(
                        "received (appended on the follower) {:.0} MB/s",
                        med(runs, |r| r.log_bytes as f64
                            / MB
                            / r.received_secs.max(1e-9))
                    )];
                    let append = med(runs, |r| {
                        r.append_secs
                            .map_or(f64::NAN, |t| r.log_bytes as f64 / MB / t)
                    });
                    if append.is_finite() {
                        notes.push(format!("leader appended at {append:.0} MB/s"));
                    }
                    let (made, reused): (u64, u64) = runs.iter().fold((0, 0), |a, r| {
                        (a.0 + r.leader_segments.0, a.1 + r.leader_segments.1)
                    });
                    if made + reused > 0 {
                        notes.push(format!(
                            "leader segments new / recycled: {made} / {reused} in all runs"
                        ));
                    }
                    notes.push(others_note(med(runs, |r| r.others)));
                    notes.push(spread(st, runs.len()));
                    let _ = writeln!(
                        s,
                        "| replication, {} | {path} | {z} | {n} | {:.0} | {:.0} | {:.3} | {:.2} | {:.2} | {} |",
                        mode.name(),
                        st.map_or(0.0, |x| x.0),
                        med(runs, ReplRun::wire_mb_s),
                        med(runs, ReplRun::wire_per_log),
                        med(runs, ReplRun::leader_s_per_gb),
                        med(runs, ReplRun::follower_s_per_gb),
                        join_notes(notes)
                    );
                }
            }
        }
    }

    if !res.repl.is_empty() {
        let _ = writeln!(
            s,
            "\n## CPU by process and component\n\nCPU seconds per GB of log applied (per \
             follower for the follower columns, mean over followers), medians over \
             repetitions. Leader: runtime = QUIC, TLS, reading the log and compressing; \
             writer = the thread appending the rows (live only); log = the engine's \
             threads. Follower: runtime = QUIC, TLS, decompressing and appending; apply = \
             the apply thread.\n"
        );
        let _ = writeln!(
            s,
            "| replication | path | zstd | followers | leader runtime | writer | leader log | \
             leader rest | **leader** | follower runtime | follower log | apply | follower rest \
             | **follower** |"
        );
        let _ = writeln!(
            s,
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for ((net, mode, zstd, n), runs) in &res.repl {
            let per_gb = |f: fn(&ReplRun) -> f64| med(runs, |r| f(r) / (r.log_bytes as f64 / 1e9));
            let z = zstd.label(a);
            let _ = writeln!(
                s,
                "| {} | {} | {z} | {n} | {:.2} | {:.2} | {:.2} | {:.2} | **{:.2}** | {:.2} | {:.2} | {:.2} | {:.2} | **{:.2}** |",
                mode.name(),
                path_name(res, *net),
                per_gb(|r| r.leader.runtime),
                per_gb(|r| r.leader.extra),
                per_gb(|r| r.leader.log),
                per_gb(|r| r.leader.rest),
                per_gb(|r| r.leader.total),
                per_gb(|r| fmean(r, |f| f.runtime)),
                per_gb(|r| fmean(r, |f| f.log)),
                per_gb(|r| fmean(r, |f| f.extra)),
                per_gb(|r| fmean(r, |f| f.rest)),
                per_gb(|r| fmean(r, |f| f.total)),
            );
        }
    }

    render_targets(&mut s, ctx, res);

    let others = res
        .refs
        .iter()
        .flat_map(|(_, v)| v.iter().map(|r| r.others))
        .chain(
            res.repl
                .iter()
                .flat_map(|(_, v)| v.iter().map(|r| r.others)),
        )
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max);
    let mut notes = res.notes.clone();
    if others > 0.25 {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        notes.insert(
            0,
            format!(
                "**other processes used up to {others:.1} of the machine's {ncpu} CPUs during \
                 some runs** (see the notes): those runs are depressed; re-run on a quieter \
                 machine or with more --reps"
            ),
        );
    }
    if !notes.is_empty() || res.repl_error.is_some() {
        let _ = writeln!(s, "\nNotes:");
        if let Some(e) = &res.repl_error {
            let _ = writeln!(s, "- replication stopped at an error: {e}");
        }
        for n in &notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    let _ = writeln!(
        s,
        "\nlog MB/s: log bytes (LSN distance) applied on the (last) follower per second, \
         timed for \"live\" from the first append (followers connected) and for \"catch-up\" \
         from the followers' start until the last applied the leader's end; references: \
         stream bytes at the receiver from its request (TCP: its accept) to the stream's \
         end; wire: `Ship` frame bytes the leader sent to one follower (raw quinn: UDP \
         bytes); CPU s/GB: a process's CPU seconds (getrusage) per 10^9 log bytes; \
         MB = 10^6 bytes."
    );
    s
}

/// A target row: what, mode, value, goal as written, bound, whether the value must be at
/// least the bound (else at most).
type Target = (String, &'static str, Option<f64>, &'static str, f64, bool);

fn render_targets(s: &mut String, ctx: &Ctx, res: &Results) {
    let a = &ctx.args;
    let _ = writeln!(s, "\n## Targets\n");
    let _ = writeln!(s, "| target | mode | value | goal | result |");
    let _ = writeln!(s, "| --- | --- | ---: | --- | --- |");
    let repl = |net, mode, zstd, n, f: fn(&ReplRun) -> f64| {
        res.repl_runs((net, mode, zstd, n))
            .and_then(|r| stats(r, f))
            .map(|x| x.0)
    };
    let raw_loop = res
        .ref_runs(0, Kind::Quic)
        .and_then(|r| stats(r, RefRun::mb_s))
        .map(|x| x.0);
    let link = path_name(res, 1);
    let mut rows: Vec<Target> = Vec::new();
    for mode in [Mode::Live, Mode::CatchUp] {
        if mode == Mode::CatchUp && a.no_catchup {
            continue;
        }
        rows.push((
            "replication without zstd / raw quinn (loopback, separate processes)".into(),
            mode.name(),
            ratio(repl(0, mode, Zstd::Off, 1, ReplRun::log_mb_s), raw_loop),
            "≥ 0.8",
            0.8,
            true,
        ));
        rows.push((
            format!("{link}: zstd / no-zstd log throughput"),
            mode.name(),
            ratio(
                repl(1, mode, Zstd::Fixed, 1, ReplRun::log_mb_s),
                repl(1, mode, Zstd::Off, 1, ReplRun::log_mb_s),
            ),
            "≥ 3",
            3.0,
            true,
        ));
        // The adaptive level is worth having if it is never much worse than the better
        // fixed choice of each path: off on loopback, a level on a slow link.
        for net in [0u8, 1] {
            let best = [Zstd::Off, Zstd::Fixed]
                .into_iter()
                .filter_map(|z| repl(net, mode, z, 1, ReplRun::log_mb_s))
                .reduce(f64::max);
            rows.push((
                format!(
                    "{}: adaptive zstd / the better of off and level {}",
                    path_name(res, net),
                    a.zstd_level
                ),
                mode.name(),
                ratio(repl(net, mode, Zstd::Adaptive, 1, ReplRun::log_mb_s), best),
                "≥ 0.9",
                0.9,
                true,
            ));
        }
    }
    if !a.no_catchup {
        rows.push((
            "log applied on the follower, MB/s (loopback, no zstd)".into(),
            Mode::CatchUp.name(),
            repl(0, Mode::CatchUp, Zstd::Off, 1, ReplRun::log_mb_s),
            "≥ 1000",
            1000.0,
            true,
        ));
    }
    // What a follower costs the leader is its runtime's shipping work (reading,
    // compressing, QUIC and TLS): appending and the engine cost the same with any count.
    if ctx.followers.contains(&1) && ctx.followers.contains(&2) {
        for zstd in [Zstd::Off, Zstd::Fixed] {
            let rt1 = repl(0, Mode::Live, zstd, 1, |r| {
                r.leader.runtime / (r.log_bytes as f64 / 1e9)
            });
            let rt2 = repl(0, Mode::Live, zstd, 2, |r| {
                r.leader.runtime / (r.log_bytes as f64 / 1e9)
            });
            rows.push((
                format!(
                    "leader CPU of the second follower / of the first (runtime s/GB, loopback, zstd {})",
                    zstd.label(a)
                ),
                Mode::Live.name(),
                match (rt1, rt2) {
                    (Some(one), Some(two)) if one > 0.0 => Some((two - one) / one),
                    _ => None,
                },
                "≤ 0.3",
                0.3,
                false,
            ));
        }
    }
    rows.push((
        "wire bytes / log bytes with zstd (loopback)".into(),
        Mode::Live.name(),
        repl(0, Mode::Live, Zstd::Fixed, 1, ReplRun::wire_per_log),
        "≤ 0.333",
        1.0 / 3.0,
        false,
    ));
    for (what, mode, value, goal, bound, at_least) in rows {
        let (v, verdict) = match value {
            Some(v) => {
                let pass = if at_least {
                    v >= bound
                } else {
                    v <= bound + 1e-9
                };
                (format!("{v:.3}"), if pass { "PASS" } else { "MISS" })
            }
            None => ("—".into(), "not measured"),
        };
        let _ = writeln!(s, "| {what} | {mode} | {v} | {goal} | {verdict} |");
    }
}
