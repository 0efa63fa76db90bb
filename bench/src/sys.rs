//! Operating-system counters that explain a measurement: the block device's flush and
//! write counts (`/proc/diskstats`) and this process's CPU time and context switches
//! (`getrusage`). All Linux-specific; each reader returns `None` where the counter is
//! unavailable rather than failing the benchmark.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// The block device (from `/proc/diskstats`) holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    major: u64,
    minor: u64,
}

/// Counters of one block device at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Write requests completed.
    pub writes: u64,
    /// Sectors (512 B) written.
    pub sectors_written: u64,
    /// Milliseconds spent writing.
    pub write_ms: u64,
    /// Flush requests completed (kernel ≥ 5.5; 0 before).
    pub flushes: u64,
    /// Milliseconds spent flushing.
    pub flush_ms: u64,
}

impl DiskCounters {
    /// Counter increments from `earlier` to `self`.
    pub fn since(&self, earlier: &DiskCounters) -> DiskCounters {
        DiskCounters {
            writes: self.writes.saturating_sub(earlier.writes),
            sectors_written: self.sectors_written.saturating_sub(earlier.sectors_written),
            write_ms: self.write_ms.saturating_sub(earlier.write_ms),
            flushes: self.flushes.saturating_sub(earlier.flushes),
            flush_ms: self.flush_ms.saturating_sub(earlier.flush_ms),
        }
    }

    /// Bytes written.
    pub fn bytes_written(&self) -> u64 {
        self.sectors_written * 512
    }
}

impl BlockDevice {
    /// The device whose number matches the file system holding `path`, if
    /// `/proc/diskstats` lists it.
    pub fn of(path: &Path) -> Option<BlockDevice> {
        let dev = std::fs::metadata(path).ok()?.dev();
        // glibc's gnu_dev_major / gnu_dev_minor.
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
        stats.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (ma, mi) = (
                f.first()?.parse::<u64>().ok()?,
                f.get(1)?.parse::<u64>().ok()?,
            );
            let name = f.get(2)?;
            (ma == major && mi == minor).then(|| BlockDevice {
                name: name.to_string(),
                major,
                minor,
            })
        })
    }

    /// The device's counters now.
    pub fn counters(&self) -> Option<DiskCounters> {
        let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
        for l in stats.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 14
                || f[0].parse::<u64>().ok()? != self.major
                || f[1].parse::<u64>().ok()? != self.minor
            {
                continue;
            }
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // Fields after major, minor, name: 1 reads, 2 reads merged, 3 sectors read,
            // 4 ms reading, 5 writes, 6 writes merged, 7 sectors written, 8 ms writing, 9 in
            // flight, 10 ms busy, 11 weighted ms, 12–15 discards, 16 flushes, 17 ms flushing.
            return Some(DiskCounters {
                writes: n(2 + 5),
                sectors_written: n(2 + 7),
                write_ms: n(2 + 8),
                flushes: n(2 + 16),
                flush_ms: n(2 + 17),
            });
        }
        None
    }
}

/// This process's resource usage at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Voluntary context switches (blocking: waits, I/O).
    pub voluntary_switches: u64,
    /// Involuntary context switches (preempted: more runnable threads than CPUs).
    pub involuntary_switches: u64,
}

impl Usage {
    /// This process's usage now (all threads), or `None` if `getrusage` fails.
    pub fn now() -> Option<Usage> {
        // SAFETY: `rusage` is plain old data, so all-zero bytes are a valid value, and
        // getrusage writes only into the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `ru` outlives the call.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return None;
        }
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1_000);
        Some(Usage {
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            voluntary_switches: ru.ru_nvcsw as u64,
            involuntary_switches: ru.ru_nivcsw as u64,
        })
    }

    /// Increments from `earlier` to `self`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(earlier.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(earlier.involuntary_switches),
        }
    }
}

/// Scheduler time of this process's threads, by thread name (`/proc/self/task/*/comm`
/// and `schedstat`: nanoseconds on a CPU and waiting on a run queue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadTimes {
    /// `(tid, name, ns running, ns runnable but waiting for a CPU)`.
    pub threads: Vec<(u64, String, u64, u64)>,
}

impl ThreadTimes {
    /// A snapshot of every thread of this process; threads that exit while it is taken
    /// are left out.
    pub fn now() -> ThreadTimes {
        let mut threads = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
            return ThreadTimes { threads };
        };
        for e in rd.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            let p = e.path();
            let (Ok(comm), Ok(st)) = (
                std::fs::read_to_string(p.join("comm")),
                std::fs::read_to_string(p.join("schedstat")),
            ) else {
                continue;
            };
            let mut f = st.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
            let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
            threads.push((tid, comm.trim().to_string(), run, wait));
        }
        ThreadTimes { threads }
    }

    /// Running and waiting nanoseconds from `earlier` to `self`, summed over threads whose
    /// name starts with `prefix` and that exist in both snapshots, and how many there were.
    pub fn since(&self, earlier: &ThreadTimes, prefix: &str) -> (u64, u64, usize) {
        let mut run = 0;
        let mut wait = 0;
        let mut n = 0;
        for (tid, name, r, w) in &self.threads {
            if !name.starts_with(prefix) {
                continue;
            }
            if let Some((_, _, r0, w0)) = earlier
                .threads
                .iter()
                .find(|(t, n0, _, _)| t == tid && n0 == name)
            {
                run += r.saturating_sub(*r0);
                wait += w.saturating_sub(*w0);
                n += 1;
            }
        }
        (run, wait, n)
    }
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// All ticks (busy, idle, iowait and steal).
    pub total: u64,
    /// Idle plus iowait ticks.
    pub idle: u64,
    /// Ticks the hypervisor gave to someone else.
    pub steal: u64,
}

impl MachineCpu {
    /// The counters now, if `/proc/stat` is readable.
    pub fn now() -> Option<MachineCpu> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let line = s.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already counted in user.
        let total = v.iter().take(8).sum();
        Some(MachineCpu {
            total,
            idle: v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0),
            steal: v.get(7).copied().unwrap_or(0),
        })
    }

    /// Increments from `earlier` to `self`.
    pub fn since(&self, earlier: &MachineCpu) -> MachineCpu {
        MachineCpu {
            total: self.total.saturating_sub(earlier.total),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    /// Fraction of CPU time busy (not idle, not stolen).
    pub fn busy_fraction(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.total.saturating_sub(self.idle + self.steal) as f64 / self.total as f64
    }

    /// Fraction of CPU time stolen by the hypervisor.
    pub fn steal_fraction(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.steal as f64 / self.total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_advances() {
        let a = Usage::now().expect("getrusage works on Linux");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let b = Usage::now().unwrap();
        assert!(b.since(&a).cpu > Duration::ZERO || x == 1);
    }

    #[test]
    fn thread_times_see_a_busy_thread() {
        let a = ThreadTimes::now();
        let h = std::thread::Builder::new()
            .name("tt-probe".into())
            .spawn(|| {
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_millis(30) {
                    std::hint::black_box(0u64);
                }
                std::thread::sleep(Duration::from_millis(200));
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let b = ThreadTimes::now();
        h.join().unwrap();
        if a.threads.is_empty() {
            return; // no /proc here
        }
        // The probe started after `a`, so it is not counted; the main thread is.
        assert_eq!(b.since(&a, "tt-probe").2, 0);
        assert!(b.threads.iter().any(|t| t.1 == "tt-probe"));
        assert!(MachineCpu::now().is_some_and(|c| c.total > 0));
    }

    #[test]
    fn device_of_temp_dir_is_optional_but_consistent() {
        // Containers may hide /proc/diskstats entries; when found, counters must parse.
        if let Some(d) = BlockDevice::of(&std::env::temp_dir()) {
            assert!(d.counters().is_some(), "{d:?}");
        }
    }
}
