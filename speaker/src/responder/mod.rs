//! Responders: the I/O side of ARP and NDP. The codecs are in [`crate::wire`]; the raw
//! socket in [`sys`]. What both responders share lives here: receiving one frame, and the
//! burst of announcements after taking an address.

pub mod arp;
pub mod ndp;
pub mod sys;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use sys::PacketSocket;

/// Announcements after taking an address (gratuitous ARP, unsolicited NA): now, then again
/// over about two seconds.
pub const ANNOUNCE_SCHEDULE: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(500),
    Duration::from_millis(1000),
    Duration::from_millis(2000),
];

/// Sends `frames` at each step of [`ANNOUNCE_SCHEDULE`] in the background, calling `sent`
/// for each frame that went out, until `cancel`.
pub(crate) fn announce(
    fd: Arc<AsyncFd<PacketSocket>>,
    frames: Vec<Vec<u8>>,
    sent: impl Fn() + Send + 'static,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut elapsed = Duration::ZERO;
        for at in ANNOUNCE_SCHEDULE {
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
