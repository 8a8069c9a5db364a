//! Processes the lab starts and must outlive `ferrolb-lab up`: each is recorded in the state
//! directory with its PID and start time, and stopped only by that record (a PID reused by
//! an unrelated process is never signalled).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, io_err};

/// What the lab remembers of one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub name: String,
    pub pid: u32,
    /// Field 22 of /proc/PID/stat: tells a reused PID from ours.
    pub start_time: u64,
    pub netns: Option<String>,
    pub command: Vec<String>,
    pub log: PathBuf,
}

fn pid_dir(state: &Path) -> PathBuf {
    state.join("pids")
}

pub fn log_dir(state: &Path) -> PathBuf {
    state.join("logs")
}

/// Start time of a live process, if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after the last ')' are plain.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcRecord {
    /// True while the recorded process (not merely its PID) runs.
    pub fn alive(&self) -> bool {
        is_running(self.pid, Some(self.start_time))
    }
}

/// True for a process that has exited and closed its files. The main thread shows `Z` as
/// soon as it has exited itself, while other threads may still be tearing down and holding
/// the process's sockets (a restart would find its port in use), so a zombie counts only
/// once it is down to that one thread.
fn is_zombie(pid: u32) -> bool {
    let zombie_leader = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    zombie_leader && threads <= 1
}

/// Starts `program args` (inside `netns` when given), detached from the caller's process
/// group so that it outlives `ferrolb-lab up`, and records it.
pub fn spawn(
    state: &Path,
    name: &str,
    netns: Option<&str>,
    program: &Path,
    args: &[String],
) -> Result<ProcRecord> {
    std::fs::create_dir_all(pid_dir(state)).map_err(io_err(pid_dir(state)))?;
    std::fs::create_dir_all(log_dir(state)).map_err(io_err(log_dir(state)))?;
    let log = log_dir(state).join(format!("{name}.log"));
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err(&log))?;
    let err = out.try_clone().map_err(io_err(&log))?;
    let mut command: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        command.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    command.push(program.display().to_string());
    command.extend(args.iter().cloned());
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        name: name.to_string(),
        source,
    })?;
    let pid = child.id();
    // The child is not waited for: it is meant to outlive us; init reaps it.
    drop(child);
    let rec = ProcRecord {
        name: name.to_string(),
        pid,
        start_time: start_time(pid).unwrap_or(0),
        netns: netns.map(str::to_string),
        command,
        log,
    };
    let path = pid_dir(state).join(format!("{name}.json"));
    let json = serde_json::to_string_pretty(&rec).map_err(|e| Error::Lab(e.to_string()))?;
    std::fs::write(&path, json).map_err(io_err(&path))?;
    Ok(rec)
}

/// Every recorded process.
pub fn records(state: &Path) -> Vec<ProcRecord> {
    let Ok(dir) = std::fs::read_dir(pid_dir(state)) else {
        return Vec::new();
    };
    let mut v: Vec<ProcRecord> = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn record(state: &Path, name: &str) -> Option<ProcRecord> {
    let s = std::fs::read_to_string(pid_dir(state).join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&s).ok()
}

/// True while process `pid` runs and (when given) still has `start_time`: a PID reused by
/// another process, or a zombie, is not ours to signal.
pub fn is_running(pid: u32, start_time: Option<u64>) -> bool {
    let now = self::start_time(pid);
    now.is_some() && start_time.is_none_or(|t| now == Some(t)) && !is_zombie(pid)
}

/// Stops a process that is not necessarily our child: SIGTERM (or SIGKILL with `hard`),
/// waits up to `grace`, then SIGKILL. Does nothing unless [`is_running`] says it is ours.
pub fn terminate(pid: u32, start_time: Option<u64>, hard: bool, grace: Duration) {
    if !is_running(pid, start_time) {
        return;
    }
    let Ok(p) = i32::try_from(pid) else { return };
    let target = Pid::from_raw(p);
    if hard {
        let _ = kill(target, Signal::SIGKILL);
    } else {
        let _ = kill(target, Signal::SIGTERM);
        // A stopped process (SIGSTOP, as a test's fault injection) handles SIGTERM only once
        // it runs again.
        let _ = kill(target, Signal::SIGCONT);
    }
    let deadline = Instant::now() + grace;
    while is_running(pid, start_time) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_running(pid, start_time) {
        let _ = kill(target, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_running(pid, start_time) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stops one recorded process (see [`terminate`]) and forgets the record.
pub fn stop(state: &Path, rec: &ProcRecord, hard: bool, grace: Duration) {
    terminate(rec.pid, Some(rec.start_time), hard, grace);
    let _ = std::fs::remove_file(pid_dir(state).join(format!("{}.json", rec.name)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_processes_are_recorded_and_stopped_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let rec = spawn(
            dir.path(),
            "sleeper",
            None,
            Path::new("/bin/sleep"),
            &["600".into()],
        )
        .unwrap();
        assert!(rec.alive());
        assert_eq!(records(dir.path()), vec![rec.clone()]);
        // A record for the same PID with another start time is not ours: never signalled.
        let stranger = ProcRecord {
            start_time: rec.start_time + 1,
            ..rec.clone()
        };
        assert!(!stranger.alive());
        stop(dir.path(), &stranger, true, Duration::from_millis(10));
        assert!(rec.alive());
        stop(dir.path(), &rec, false, Duration::from_secs(5));
        assert!(!rec.alive());
        assert!(records(dir.path()).is_empty());
    }
}
