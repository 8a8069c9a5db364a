//! A child process that the harness started and alone stops: by PID, SIGTERM first, then
//! SIGKILL, always reaped. Output goes to a log file so a failing test can show it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result, io_err};

/// A running child process; dropping it stops it.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    grace: Duration,
}

impl Supervised {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Supervised> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err(log))?;
        let err = out.try_clone().map_err(io_err(log))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            name: name.to_string(),
            source,
        })?;
        Ok(Supervised {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            grace: Duration::from_secs(5),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// An error describing an early exit, with the end of the log.
    pub fn early_exit_error(&mut self) -> Option<Error> {
        let status = self.exited()?;
        Some(Error::EarlyExit {
            name: self.name.clone(),
            status: status.to_string(),
            log: self.log.display().to_string(),
            tail: log_tail(&self.log, 20),
        })
    }

    /// Sends SIGTERM, waits up to the grace period, then SIGKILL; reaps the process.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = i32::try_from(child.id()).map(Pid::from_raw);
        if let Ok(pid) = pid {
            let _ = kill(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a log file (empty when unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A process's resident memory and its peak (`VmRSS`, `VmHWM` from `/proc/PID/status`), in
/// KiB; `None` when it is gone.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// True while a process with this PID exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(p) => kill(Pid::from_raw(p), None).is_ok(),
        Err(_) => false,
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("127.0.0.1:0"))?;
    let port = l.local_addr().map_err(io_err("127.0.0.1:0"))?.port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_terminates_and_reaps_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut p = Supervised::spawn("sleep", cmd, &dir.path().join("sleep.log")).unwrap();
        let pid = p.pid().unwrap();
        assert!(pid_alive(pid));
        assert!(p.exited().is_none());
        p.stop();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn drop_stops_the_child_even_if_it_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
        ]);
        let mut p = Supervised::spawn("stubborn", cmd, &dir.path().join("s.log")).unwrap();
        p.grace = Duration::from_millis(300);
        let pid = p.pid().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(p);
        assert!(!pid_alive(pid));
    }

    #[test]
    fn early_exit_reports_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo first; echo 'bind: address already in use'; exit 3",
        ]);
        let mut p = Supervised::spawn("failing", cmd, &dir.path().join("f.log")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let msg = p.early_exit_error().unwrap().to_string();
        assert!(msg.contains("address already in use"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }
}
