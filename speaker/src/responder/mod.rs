//! Responders: the I/O side of ARP and NDP. The codecs are in [`crate::wire`]; the raw
//! socket in [`sys`]. What both responders share lives here: receiving one frame, and the
//! burst of announcements after taking an address.

pub mod arp;
pub mod ndp;
pub mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use sys::PacketSocket;

/// Announcements after taking an address (gratuitous ARP, unsolicited NA): now, then again
/// over about two seconds.
pub const ANNOUNCE_SCHEDULE: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];

/// The least time between two re-assertions of one address.
pub const REASSERT_GAP: Duration = Duration::from_secs(1);

/// How long a re-assertion waits before its first frame. A claim from another MAC is most
/// often a peer taking the address over while this node is about to give it up (a SIGTERM
/// handover, an election the peer applied a few milliseconds earlier); giving it up cancels
/// the burst, so in those cases nothing is sent and the traffic is not pulled back.
pub const REASSERT_DELAY: Duration = Duration::from_millis(500);

/// When to announce an owned address again because another MAC claimed it (a node with a
/// stale view, a misconfigured host, a rival load balancer): at once, then not again for
/// [`REASSERT_GAP`], so that two claimants cannot flood the LAN with bursts. Pure: the
/// caller passes the time.
#[derive(Debug)]
pub struct Reassertions<T> {
    last: BTreeMap<T, Instant>,
}

impl<T: Ord + Copy> Default for Reassertions<T> {
    fn default() -> Self {
        Reassertions {
            last: BTreeMap::new(),
        }
    }
}

impl<T: Ord + Copy> Reassertions<T> {
    /// Another MAC claimed `ip` at `now`: announce it again?
    pub fn claimed(&mut self, ip: T, now: Instant) -> bool {
        match self.last.get(&ip) {
            Some(at) if now.saturating_duration_since(*at) < REASSERT_GAP => false,
            _ => {
                self.last.insert(ip, now);
                true
            }
        }
    }

    /// `ip` was given up: its history goes with it (a later owner starts afresh).
    pub fn forget(&mut self, ip: T) {
        self.last.remove(&ip);
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// Sends `frames` at each step of [`ANNOUNCE_SCHEDULE`], each `delay` later, in the
/// background, calling `sent` for each frame that went out, until `cancel`.
pub(crate) fn announce(
    fd: Arc<AsyncFd<PacketSocket>>,
    frames: Vec<Vec<u8>>,
    sent: impl Fn() + Send + 'static,
    delay: Duration,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut elapsed = Duration::ZERO;
        for at in ANNOUNCE_SCHEDULE.map(|at| at + delay) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(at.saturating_sub(elapsed)) => {}
            }
            elapsed = at;
            for frame in &frames {
                if fd.get_ref().send(frame).is_ok() {
                    sent();
                }
            }
        }
    });
}

/// Waits for the next frame (not one this host sent) and returns its length. Cancel-safe:
/// it only suspends while waiting for readiness.
pub(crate) async fn recv_frame(
    fd: &AsyncFd<PacketSocket>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().recv(buf)) {
            Ok(Ok(Some(n))) => return Ok(n),
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// What one responder does for its address family; [`serve`] runs the loop they share.
pub(crate) trait Family<T> {
    /// Called once for each address that joins (`taken`) or leaves the owned set, before
    /// any frame is answered with the new set.
    fn changed(&mut self, fd: &AsyncFd<PacketSocket>, ip: T, taken: bool);
    /// The announcement frames sent in a burst after taking `ip`.
    fn burst(&self, ip: T) -> Vec<Vec<u8>>;
    /// Counts one burst frame sent; it runs on the burst's task.
    fn burst_sent(&self) -> impl Fn() + Send + 'static;
    /// Counts a claim from another MAC on an address this node keeps.
    fn conflict(&self);
    /// Handles one received frame, given the addresses owned now; returns an owned address
    /// the frame claimed from another MAC.
    fn answer(
        &mut self,
        fd: &AsyncFd<PacketSocket>,
        frame: &[u8],
        owned: &BTreeSet<T>,
    ) -> Option<T>;
}

/// Runs a responder on `socket` until `cancel` (or until the owned set's sender is gone):
/// follows `owned`, announcing each address it takes, and hands every received frame to
/// `family` with the current set. When a frame from another MAC claims an owned address,
/// the address's burst is sent again (at most once per [`REASSERT_GAP`]). The set is
/// compared only when it changes, never per frame.
///
/// Once `handover` fires (SIGTERM: this node left gossip, its peers take its addresses),
/// the set is kept as it is, nothing is announced again, and each address is answered
/// until another MAC announces it (the peer that took it over): no moment in which nobody
/// answers. The responder ends when it answers for nothing any more (or at `cancel`).
pub(crate) async fn serve<T: Ord + Copy + std::fmt::Display>(
    socket: PacketSocket,
    mut owned: watch::Receiver<BTreeSet<T>>,
    mut family: impl Family<T>,
    what: &'static str,
    cancel: CancellationToken,
    handover: CancellationToken,
) -> std::io::Result<()> {
    let fd = Arc::new(socket.into_async()?);
    let mut buf = vec![0u8; 2048];
    let mut announced: BTreeSet<T> = BTreeSet::new();
    // Each address's burst stops when the address is given up: announcing it any longer
    // would pull its traffic back from the new owner.
    let mut bursts: BTreeMap<T, CancellationToken> = BTreeMap::new();
    let mut reassertions = Reassertions::default();
    let mut changed = true;
    let mut handing_over = false;
    loop {
        if changed {
            let now: BTreeSet<T> = owned.borrow_and_update().clone();
            for ip in announced.difference(&now) {
                family.changed(&fd, *ip, false);
                if let Some(burst) = bursts.remove(ip) {
                    burst.cancel();
                }
                reassertions.forget(*ip);
            }
            for ip in now.difference(&announced) {
                family.changed(&fd, *ip, true);
                start_burst(&fd, &family, &cancel, &mut bursts, *ip, Duration::ZERO);
            }
            announced = now;
            changed = false;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = handover.cancelled(), if !handing_over => {
                handing_over = true;
                if announced.is_empty() {
                    return Ok(());
                }
            }
            r = owned.changed(), if !handing_over => {
                if r.is_err() {
                    return Ok(());
                }
                changed = true;
            }
            r = recv_frame(&fd, &mut buf) => match r {
                Ok(n) => {
                    let claimed = family
                        .answer(&fd, buf.get(..n).unwrap_or(&[]), &announced)
                        .filter(|ip| announced.contains(ip));
                    match claimed {
                        Some(ip) if handing_over => {
                            debug!(%ip, "{what}: another node announces an address this node hands over; no longer answering for it");
                            announced.remove(&ip);
                            family.changed(&fd, ip, false);
                            if let Some(burst) = bursts.remove(&ip) {
                                burst.cancel();
                            }
                            if announced.is_empty() {
                                return Ok(());
                            }
                        }
                        Some(ip) => {
                            family.conflict();
                            if reassertions.claimed(ip, Instant::now()) {
                                warn!(%ip, "{what}: another MAC claims an address this node owns; announcing it again");
                                start_burst(&fd, &family, &cancel, &mut bursts, ip, REASSERT_DELAY);
                            }
                        }
                        None => {}
                    }
                }
                Err(e) => warn!(%e, "{what} receive"),
            },
        }
    }
}

/// Starts `ip`'s burst `delay` from now, replacing (cancelling) one still running for it.
fn start_burst<T: Ord + Copy>(
    fd: &Arc<AsyncFd<PacketSocket>>,
    family: &impl Family<T>,
    cancel: &CancellationToken,
    bursts: &mut BTreeMap<T, CancellationToken>,
    ip: T,
    delay: Duration,
) {
    let burst = cancel.child_token();
    announce(
        fd.clone(),
        family.burst(ip),
        family.burst_sent(),
        delay,
        burst.clone(),
    );
    if let Some(old) = bursts.insert(ip, burst) {
        old.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_address_is_reasserted_at_most_once_a_second() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = Reassertions::default();
        assert!(r.claimed(1u8, at(0)));
        assert!(
            !r.claimed(1, at(10)),
            "a second claim right after: no new burst"
        );
        assert!(!r.claimed(1, at(999)));
        assert!(r.claimed(2, at(999)), "each address on its own");
        assert!(r.claimed(1, at(1000)));
        assert!(!r.claimed(1, at(1500)));
        // A clock that went backwards (not monotonic in a test) is not a new gap.
        assert!(!r.claimed(1, at(900)));
        r.forget(1);
        assert_eq!(r.len(), 1);
        assert!(
            r.claimed(1, at(1600)),
            "given up and taken again: starts afresh"
        );
        r.forget(1);
        r.forget(2);
        assert!(r.is_empty());
    }
}
