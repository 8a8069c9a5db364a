//! Catching a warm cache up before a new leader trusts it.
//!
//! A standby's caches are kept current by its watches, but "current" is only as good as the
//! watch: a loaded machine or a slow API server can leave a cache seconds behind, and a new
//! leader that restores from it would miss the last leader's latest status writes (an
//! address it never saw would be free to hand out while a Service's status still holds it).
//! Listing everything again would settle it at the cost the warm standby exists to avoid.
//!
//! Instead, per kind, with two small requests side by side:
//! - **the current revision** `R`: a consistent watch-list that selects no object
//!   (`metadata.name=-`, a name no object can have) ends with the bookmark that marks the end
//!   of its initial events, carrying a revision at least as new as the moment it was asked;
//! - **the changes since the cache's newest** `M`: a short watch from `M` with bookmarks
//!   delivers every change after `M` in order, then a bookmark before its timeout; once a
//!   bookmark or a change reaches `R`, every change up to `R` has been seen: the newest of
//!   them, `N`, is what the cache must have applied.
//!
//! Then the cache is waited for until it has applied `N` (at once when nothing changed).
//! Whatever cannot be proven this way (the server does not support watch-lists, `M` is too
//! old for the server's watch history, no bookmark came, the cache does not get there in
//! time) is answered by listing that kind again: slower, never wrong.
//!
//! Resource versions are compared as numbers: the API calls them opaque, but every server
//! ferrolb runs on uses etcd's revisions; a version that is not a number means "list again".

use std::fmt::Debug;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use kube::api::{Api, WatchEvent, WatchParams};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// How long the changes-since watch runs: the server sends its bookmark two seconds before
/// the end, so this must be at least three; three makes it come after about one second.
const TAIL_SECONDS: u32 = 3;
/// Changes' watches per proof: a second one when the first ended unsettled.
const TAILS: u32 = 2;
/// How long the current-revision request may take before it counts as unsupported.
const REVISION_SECONDS: u32 = 5;
/// The annotation the server puts on the bookmark that ends a watch-list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// Why a cache could not be proven current; the answer to each is to list that kind again.
#[derive(Debug, thiserror::Error)]
pub enum Behind {
    #[error("the cache has seen no object yet")]
    NothingSeen,
    #[error("resource version {0:?} is not a number")]
    Unparsable(String),
    #[error("the API server answered: {0}")]
    Api(String),
    #[error("the watch ended at revision {reached}, before revision {target}")]
    NoBookmark { reached: u64, target: u64 },
    #[error("the cache has applied revision {have}, not yet {need}, after {after:?}")]
    Lagging {
        need: u64,
        have: u64,
        after: Duration,
    },
}

impl From<kube::Error> for Behind {
    fn from(e: kube::Error) -> Self {
        Behind::Api(e.to_string())
    }
}

/// What the changes-since watch has shown so far (the pure half of the protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// The cache's newest revision, where the watch starts.
    from: u64,
    /// The current revision, once known.
    target: Option<u64>,
    /// Revisions of the changes seen after `from` (a second watch from `from` repeats them).
    changes: std::collections::BTreeSet<u64>,
    /// How far the watch has come: the newest bookmark or change seen (a watch delivers in
    /// order, and the server sends no bookmark that is not newer than what it sent last).
    reached: u64,
}

impl Tail {
    pub fn new(from: u64) -> Tail {
        Tail {
            from,
            ..Tail::default()
        }
    }

    pub fn target(&mut self, revision: u64) {
        self.target = Some(revision);
    }

    pub fn change(&mut self, revision: u64) {
        self.changes.insert(revision);
        self.reached = self.reached.max(revision);
    }

    pub fn bookmark(&mut self, revision: u64) {
        self.reached = self.reached.max(revision);
    }

    /// Once settled, the revision the cache must have applied: the newest change up to the
    /// target (changes after it reach the leader through its feed), or where it started.
    pub fn settled(&self) -> Option<u64> {
        let target = self.target?;
        (self.reached >= target).then(|| {
            self.changes
                .iter()
                .copied()
                .filter(|r| *r <= target)
                .fold(self.from, u64::max)
        })
    }
}

/// A resource version as a number.
pub fn revision(rv: Option<&str>) -> Result<u64, Behind> {
    let rv = rv.unwrap_or_default();
    rv.parse().map_err(|_| Behind::Unparsable(rv.to_string()))
}

/// Proves that the cache whose applied revision `applied` reports holds every change of
/// its kind made before this call, waiting for it up to `wait`; returns how many changes it
/// had to wait for.
pub async fn prove_current<K>(
    api: &Api<K>,
    mut applied: watch::Receiver<u64>,
    wait: Duration,
) -> Result<usize, Behind>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let from = *applied.borrow_and_update();
    if from == 0 {
        return Err(Behind::NothingSeen);
    }
    // The two requests side by side. The changes' watch ends with one bookmark (about a
    // second in); should it come before the server's cache reached the target, the watch
    // ends unsettled and is asked once more.
    let mut tail = Tail::new(from);
    let mut current = std::pin::pin!(current_revision(api));
    let mut asking = true;
    let mut tails_left = TAILS;
    let tail_params = WatchParams {
        bookmarks: true,
        timeout: Some(TAIL_SECONDS),
        ..WatchParams::default()
    };
    let mut since = api
        .watch_metadata(&tail_params, &from.to_string())
        .await?
        .boxed();
    tails_left -= 1;
    let need = loop {
        if let Some(need) = tail.settled() {
            break need;
        }
        tokio::select! {
            r = &mut current, if asking => {
                asking = false;
                tail.target(r?);
            }
            event = since.try_next() => match event? {
                None if tails_left > 0 => {
                    tails_left -= 1;
                    since = api.watch_metadata(&tail_params, &from.to_string()).await?.boxed();
                }
                None => {
                    return Err(Behind::NoBookmark {
                        reached: tail.reached,
                        target: tail.target.unwrap_or_default(),
                    });
                }
                Some(WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)) => {
                    tail.change(revision(o.metadata.resource_version.as_deref())?);
                }
                Some(WatchEvent::Bookmark(b)) => {
                    tail.bookmark(revision(Some(&b.metadata.resource_version))?);
                }
                Some(WatchEvent::Error(e)) => return Err(Behind::Api(e.to_string())),
            },
        }
    };
    let waited = tail.changes.iter().filter(|r| **r <= need).count();
    let started = tokio::time::Instant::now();
    let reached = tokio::time::timeout(wait, applied.wait_for(|have| *have >= need))
        .await
        .is_ok_and(|r| r.is_ok());
    if reached {
        Ok(waited)
    } else {
        // The watch is gone (the process is stopping) or too slow: say how far it got.
        Err(Behind::Lagging {
            need,
            have: *applied.borrow(),
            after: started.elapsed(),
        })
    }
}

/// The current revision of `api`'s kind, from a consistent watch-list that selects nothing.
async fn current_revision<K>(api: &Api<K>) -> Result<u64, Behind>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = WatchParams {
        field_selector: Some("metadata.name=-".into()),
        bookmarks: true,
        send_initial_events: true,
        timeout: Some(REVISION_SECONDS),
        ..WatchParams::default()
    };
    let events = api.watch_metadata(&params, "").await?;
    let mut events = std::pin::pin!(events.boxed());
    while let Some(event) = events.try_next().await? {
        match event {
            WatchEvent::Bookmark(b)
                if b.metadata
                    .annotations
                    .get(INITIAL_EVENTS_END)
                    .map(String::as_str)
                    == Some("true") =>
            {
                return revision(Some(&b.metadata.resource_version));
            }
            WatchEvent::Error(e) => return Err(Behind::Api(e.to_string())),
            _ => {}
        }
    }
    Err(Behind::NoBookmark {
        reached: 0,
        target: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_settled_before_the_target_is_known_and_a_bookmark_reaches_it() {
        let mut t = Tail::new(100);
        t.bookmark(500);
        assert_eq!(t.settled(), None, "no target yet");
        t.target(600);
        assert_eq!(t.settled(), None, "the bookmark is older than the target");
        t.bookmark(600);
        assert_eq!(t.settled(), Some(100), "no change since the cache's newest");
    }

    #[test]
    fn the_cache_must_have_the_newest_change_up_to_the_target_and_no_later_one() {
        let mut t = Tail::new(100);
        t.change(120);
        t.change(340);
        t.change(700);
        t.target(600);
        t.bookmark(800);
        assert_eq!(t.settled(), Some(340));
    }

    #[test]
    fn a_change_at_the_target_settles_it_without_a_bookmark() {
        let mut t = Tail::new(100);
        t.target(201);
        t.change(150);
        assert_eq!(t.settled(), None);
        t.change(201);
        assert_eq!(t.settled(), Some(201));
    }

    #[test]
    fn a_bookmark_never_goes_back() {
        let mut t = Tail::new(10);
        t.target(50);
        t.bookmark(60);
        t.bookmark(20);
        assert_eq!(t.settled(), Some(10));
    }

    #[test]
    fn a_version_that_is_not_a_number_is_refused() {
        assert_eq!(revision(Some("42")).ok(), Some(42));
        assert!(matches!(revision(Some("a1")), Err(Behind::Unparsable(v)) if v == "a1"));
        assert!(matches!(revision(None), Err(Behind::Unparsable(_))));
    }
}
