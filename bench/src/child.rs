//! The far end of a benchmark in a process of its own: the replication benchmark runs
//! every receiver (a walship follower, a raw quinn client, a TCP reader) as a child
//! process, so the two ends do not share an address space, an allocator, a runtime or
//! the accounting of CPU time, as in a real deployment.
//!
//! A child is the benchmark binary itself started with a role as its first argument; it
//! talks to its parent in lines, one command on its stdin, one reply on its stdout
//! (`ok …` or `err …`). Its stderr goes to the parent's. [`Child`] is the parent's handle;
//! it kills and reaps the process when dropped, so no child outlives a failed run.
//! A child in a network namespace is started through `ip netns exec`.
//!
//! Times cross the process boundary as `CLOCK_MONOTONIC` nanoseconds ([`mono_ns`]), one
//! clock for every process of the machine.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::Res;

/// `CLOCK_MONOTONIC` now, in nanoseconds: comparable between processes of one machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's CPU time (user plus system, all threads), nanoseconds.
pub fn process_cpu_ns() -> u64 {
    crate::sys::Usage::now().map_or(0, |u| u.cpu.as_nanos() as u64)
}

/// The `n` numbers of a child's reply; `what` names the reply in the error.
pub fn numbers(reply: &str, n: usize, what: &str) -> Res<Vec<u64>> {
    let v: Vec<u64> = reply
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {reply:?}: {e}"))?;
    if v.len() != n {
        return Err(format!("{what} {reply:?}: expected {n} numbers").into());
    }
    Ok(v)
}

/// A running child process and its command channel.
pub struct Child {
    what: String,
    proc: std::process::Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Child {
    /// Starts this executable with `args`, inside network namespace `netns` if given,
    /// and waits for its first line (its readiness), which must start with `ok`.
    pub fn spawn(what: &str, netns: Option<&str>, args: &[String]) -> Res<(Child, String)> {
        let exe = std::env::current_exe()?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut proc = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start the {what} process: {e}"))?;
        let (Some(stdin), Some(stdout)) = (proc.stdin.take(), proc.stdout.take()) else {
            let _ = proc.kill();
            let _ = proc.wait();
            return Err(format!("the {what} process has no stdin/stdout pipes").into());
        };
        let mut child = Child {
            what: what.to_owned(),
            proc,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let ready = child.reply()?;
        Ok((child, ready))
    }

    /// Sends one command line.
    pub fn send(&mut self, cmd: &str) -> Res<()> {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("send {cmd:?} to the {} process: {e}", self.what).into())
    }

    /// Reads one reply: the text after `ok`, or the child's `err` text as an error.
    pub fn reply(&mut self) -> Res<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("read from the {} process: {e}", self.what))?;
        if n == 0 {
            return Err(format!("the {} process exited without replying", self.what).into());
        }
        let line = line.trim_end();
        match line.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => Err(format!("the {} process: {line}", self.what).into()),
        }
    }

    /// Sends `cmd` and reads its reply.
    pub fn call(&mut self, cmd: &str) -> Res<String> {
        self.send(cmd)?;
        self.reply()
    }

    /// Waits up to `timeout` for the process to exit after its last command.
    pub fn finish(mut self, timeout: Duration) -> Res<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the {} process exited with {status}", self.what).into())
                };
            }
            if std::time::Instant::now() >= deadline {
                return Err(
                    format!("the {} process did not exit in {timeout:?}", self.what).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.proc.try_wait() {
            let _ = self.proc.kill();
        }
        let _ = self.proc.wait();
    }
}

/// The child's side: replies on stdout, one line each.
pub fn reply(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child's side: the next command on stdin, `None` at its end.
pub fn next_command() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_hold_exactly_the_numbers_expected() {
        assert_eq!(numbers("1 2 3", 3, "reply").unwrap(), vec![1, 2, 3]);
        assert!(numbers("1 2", 3, "reply").is_err());
        assert!(numbers("1 x 3", 3, "reply").is_err());
    }

    #[test]
    fn the_monotonic_clock_advances() {
        let a = mono_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(mono_ns() >= a + 2_000_000);
    }
}
