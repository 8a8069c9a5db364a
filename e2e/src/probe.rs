//! A traffic probe: new TCP connections to one address at a steady rate, from inside a
//! network namespace of the test's cluster (the lab's client namespace, or a kind client
//! container's), each sending one HTTP request to an echo pod and noting who answered.
//! Benchmarks and operation tests read the attempts afterwards; [`summarize`] is the pure
//! part that turns them into figures.
//!
//! The probe runs on a thread of its own that enters the namespace (`setns`), so the test
//! process itself stays in the host's namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

use crate::lab::echo::EchoReply;
use crate::{Error, Result};

/// How long one attempt may take to connect, and then to get its answer.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(100),
            read: Duration::from_millis(200),
        }
    }
}

/// One attempt: when it started, and (on success) when it was established and who served
/// it.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub start: Instant,
    pub ok: Option<(Instant, EchoReply)>,
}

/// A running probe; stops when dropped.
#[derive(Debug)]
pub struct Probe {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// Starts probing `target` from the network namespace at `netns` (a `/run/netns/NAME`
    /// or `/proc/PID/ns/net` path): a new connection every `interval`, or as soon as the
    /// previous attempt ends when that takes longer.
    pub fn start(
        netns: &Path,
        target: SocketAddr,
        interval: Duration,
        timeouts: Timeouts,
    ) -> Result<Probe> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let (s, l) = (stop.clone(), log.clone());
        let netns: PathBuf = netns.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                if let Err(e) = enter_netns(&netns) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                while !s.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let ok = once(target, timeouts);
                    l.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Attempt { start, ok });
                    let next = start + interval;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                }
            })
            .map_err(|source| Error::Spawn {
                name: "probe thread".into(),
                source,
            })?;
        let probe = Probe {
            stop,
            log,
            thread: Some(thread),
        };
        ready_rx
            .recv()
            .map_err(|_| Error::Lab("the probe thread died".into()))?
            .map_err(Error::Lab)?;
        Ok(probe)
    }

    /// Every attempt so far, in order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves the calling thread into the network namespace at `netns` (for good: call it on a
/// thread of its own).
pub fn enter_netns(netns: &Path) -> Result<()> {
    let f = std::fs::File::open(netns).map_err(crate::io_err(netns))?;
    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::Lab(format!("setns {}: {e}", netns.display())))
}

/// One attempt: connect, `GET /`, read the echo reply.
pub fn once(target: SocketAddr, timeouts: Timeouts) -> Option<(Instant, EchoReply)> {
    let mut s = TcpStream::connect_timeout(&target, timeouts.connect).ok()?;
    let connected = Instant::now();
    s.set_read_timeout(Some(timeouts.read)).ok()?;
    s.set_write_timeout(Some(timeouts.read)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    // A read timeout leaves what arrived so far in `buf`.
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n")?.1;
    EchoReply::parse(body).map(|r| (connected, r))
}

/// What a run of attempts amounts to.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub attempts: usize,
    pub failed: usize,
    /// The longest time without a successful new connection: between two successive
    /// successful attempts' starts (from the first attempt's start, and to the last
    /// attempt's start, when the run begins or ends with failures).
    pub longest_gap: Duration,
}

/// Summarizes attempts given in start order.
pub fn summarize(attempts: &[Attempt]) -> Summary {
    let failed = attempts.iter().filter(|a| a.ok.is_none()).count();
    let mut longest = Duration::ZERO;
    let mut since: Option<Instant> = attempts.first().map(|a| a.start);
    for a in attempts {
        if a.ok.is_some() {
            if let Some(s) = since {
                longest = longest.max(a.start.saturating_duration_since(s));
            }
            since = Some(a.start);
        }
    }
    if let (Some(s), Some(last)) = (since, attempts.last())
        && last.ok.is_none()
    {
        longest = longest.max(last.start.saturating_duration_since(s));
    }
    Summary {
        attempts: attempts.len(),
        failed,
        longest_gap: longest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pattern: &str) -> Vec<Attempt> {
        let t0 = Instant::now();
        pattern
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let start = t0 + Duration::from_millis(20 * i as u64);
                let ok = (c == '+').then(|| {
                    (
                        start,
                        EchoReply {
                            pod: "ns/p".into(),
                            node: "n".into(),
                            client: "10.0.0.1:1".parse().unwrap(),
                        },
                    )
                });
                Attempt { start, ok }
            })
            .collect()
    }

    #[test]
    fn steady_success_has_the_interval_as_its_longest_gap() {
        let s = summarize(&run("+++++"));
        assert_eq!(s.attempts, 5);
        assert_eq!(s.failed, 0);
        assert_eq!(s.longest_gap, Duration::from_millis(20));
    }

    #[test]
    fn failures_in_a_row_make_the_gap_between_the_successes_around_them() {
        let s = summarize(&run("++---+-+"));
        assert_eq!(s.failed, 4);
        // From attempt 1 to attempt 5: four intervals.
        assert_eq!(s.longest_gap, Duration::from_millis(80));
    }

    #[test]
    fn failures_at_the_edges_count_from_the_first_and_to_the_last_attempt() {
        assert_eq!(
            summarize(&run("---++")).longest_gap,
            Duration::from_millis(60)
        );
        assert_eq!(
            summarize(&run("++----")).longest_gap,
            Duration::from_millis(80)
        );
        let none = summarize(&run("---"));
        assert_eq!(
            (none.failed, none.longest_gap),
            (3, Duration::from_millis(40))
        );
        assert_eq!(summarize(&[]).longest_gap, Duration::ZERO);
    }
}
