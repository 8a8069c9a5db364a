//! Lease-based leader election: which controller replica may write.
//!
//! Every replica runs a [`LeaderElector`] on one `coordination.k8s.io/v1` Lease; the one
//! named in `spec.holderIdentity` leads and renews it every retry period, the others stand
//! by and take over once the holder stops renewing for a lease duration. This module owns
//! that Lease and nothing else: it never touches Services or pools, and it does not stop
//! the controller's work itself. Callers ask the [`LeaderHandle`]: [`LeaderHandle::still_leading`]
//! right before every write.
//!
//! The decisions live in [`Election`], a plain struct that gets the Lease and the time from
//! its caller (so tests drive it with any clock), and in [`role`], which tells from what the
//! elector last published whether this replica leads, stands by a valid holder, or sees
//! nobody leading (what `/readyz` needs); [`LeaderElector`] is the thin I/O loop around
//! them. Kube-runtime 5 ships no lease helper, hence this module.
//!
//! Expiry is judged the way client-go judges it: by how long *this* replica has seen the
//! same record unchanged on its own monotonic clock, never by comparing the holder's
//! `renewTime` with our wall clock, so clock skew between nodes cannot hand out the lease
//! early. The price: a replica that starts while a dead holder's record is still in place
//! waits one full lease duration before taking over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_crds::health::Reporter;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::Error;

/// How long a holder's lease is valid without renewal (client-go's default).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader keeps trying to renew before it steps down (client-go's default).
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often every replica reads (and the leader renews) the Lease (client-go's default).
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Which Lease to contend for, as whom, and how fast.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    /// This replica's unique name; the pod name.
    pub identity: String,
    /// Written into the Lease (rounded up to whole seconds): how long others wait for a
    /// renewal before they take over.
    pub lease_duration: Duration,
    /// The leader steps down when it has not renewed for this long. It is also how long a
    /// renewal counts locally: [`LeaderHandle::still_leading`] is true until the start of the
    /// last successful renewal plus this deadline, i.e. the lease duration minus a safety
    /// margin of `lease_duration - renew_deadline` for clock drift and slow requests.
    pub renew_deadline: Duration,
    /// Pause between two rounds (read, then acquire or renew).
    pub retry_period: Duration,
    /// Set on a Lease this replica creates (see [`crate::owner`]).
    pub owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

impl LeaderConfig {
    /// A config with client-go's default timings (15 s / 10 s / 2 s).
    pub fn new(
        lease_name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaderConfig {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
            owner: None,
        }
    }

    /// The same config, whose new Leases `owner` owns.
    pub fn owned_by(
        mut self,
        owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    ) -> Self {
        self.owner = owner;
        self
    }

    /// The same config with other timings.
    pub fn with_timings(
        mut self,
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = renew_deadline;
        self.retry_period = retry_period;
        self
    }

    /// `namespace/name` of the Lease, for messages.
    pub fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.lease_name)
    }

    /// Checks what the loop relies on: names are set and
    /// `lease_duration > renew_deadline > retry_period > 0`.
    pub fn validate(&self) -> Result<(), Error> {
        let problem = if self.lease_name.is_empty() {
            Some("the lease name is empty")
        } else if self.namespace.is_empty() {
            Some("the namespace is empty")
        } else if self.identity.is_empty() {
            Some("the holder identity is empty")
        } else if self.retry_period.is_zero() {
            Some("the retry period must be longer than zero")
        } else if self.renew_deadline <= self.retry_period {
            Some("the renew deadline must be longer than the retry period")
        } else if self.lease_duration <= self.renew_deadline {
            Some("the lease duration must be longer than the renew deadline")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::LeaseConfig {
                lease: self.lease_ref(),
                problem,
            }),
            None => Ok(()),
        }
    }

    /// `spec.leaseDurationSeconds`: whole seconds, rounded up, at least 1.
    pub fn lease_duration_seconds(&self) -> i32 {
        let rounded_up = self
            .lease_duration
            .as_secs()
            .saturating_add(u64::from(self.lease_duration.subsec_nanos() > 0));
        i32::try_from(rounded_up.max(1)).unwrap_or(i32::MAX)
    }
}

/// What a replica does with the Lease it just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The Lease is absent, released, expired, or already names us while we do not lead:
    /// write ourselves in as holder.
    Acquire,
    /// We lead and the Lease still names us: bump `renewTime`.
    Renew,
    /// Someone else holds a lease that has not expired: wait.
    StandBy { holder: String },
    /// The Lease names our identity, but the record is not one this process wrote:
    /// another process uses the same identity. Never lead on it (and stop, if leading):
    /// two processes that both believe the record is theirs would both write.
    Clash,
    /// We led, but no longer: the Lease names someone else, or we could not renew within
    /// the renew deadline. Stop writing at once.
    Lost { holder: Option<String> },
}

/// The election's state machine: state in, decision out, no I/O and no clock of its own.
#[derive(Clone, Debug)]
pub struct Election {
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    /// Start of the round whose write last succeeded, while we lead.
    last_renew: Option<Instant>,
    /// The other holder's record as last seen, and when it was first seen like that.
    observed: Option<(LeaseSpec, Instant)>,
    /// The records this process sent last (confirmed or not: a write that timed out may
    /// have landed), newest last: a record naming us that is none of these was written by
    /// someone else under our identity.
    sent: std::collections::VecDeque<LeaseSpec>,
}

/// How many of our own last records are remembered (see [`Election::sent`]).
const SENT_KEPT: usize = 3;

/// The same record, with times compared at the microsecond precision the API server keeps.
fn same_record(a: &LeaseSpec, b: &LeaseSpec) -> bool {
    let micros = |t: &Option<MicroTime>| t.as_ref().map(|t| t.0.as_microsecond());
    a.holder_identity == b.holder_identity
        && a.lease_duration_seconds == b.lease_duration_seconds
        && a.lease_transitions == b.lease_transitions
        && micros(&a.renew_time) == micros(&b.renew_time)
        && micros(&a.acquire_time) == micros(&b.acquire_time)
}

impl Election {
    pub fn new(
        identity: impl Into<String>,
        lease_duration: Duration,
        renew_deadline: Duration,
    ) -> Self {
        Election {
            identity: identity.into(),
            lease_duration,
            renew_deadline,
            last_renew: None,
            observed: None,
            sent: std::collections::VecDeque::new(),
        }
    }

    pub fn from_config(config: &LeaderConfig) -> Self {
        Self::new(
            config.identity.clone(),
            config.lease_duration,
            config.renew_deadline,
        )
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn is_leading(&self) -> bool {
        self.last_renew.is_some()
    }

    /// Until when our leadership counts, by the local clock: the start of the last
    /// successful renewal plus the renew deadline. `None` when we do not lead.
    pub fn leading_until(&self) -> Option<Instant> {
        self.last_renew.map(|renewed| renewed + self.renew_deadline)
    }

    /// Decides what to do with `lease` (the Lease as just read, `None` when absent) at `now`.
    pub fn decide(&mut self, lease: Option<&Lease>, now: Instant) -> Decision {
        if let Some(lost) = self.check_deadline(now) {
            return lost;
        }
        let spec = lease.and_then(|l| l.spec.as_ref());
        let holder = spec
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        match (holder, spec) {
            (Some(holder), Some(spec)) if holder == self.identity => {
                if self.is_ours(spec) {
                    self.observed = None;
                    return if self.is_leading() {
                        Decision::Renew
                    } else {
                        // Our own last write (after a loss by deadline): take it back.
                        Decision::Acquire
                    };
                }
                // Our identity, not our record: another process writes under it, or one
                // that used it before us (a restart under the same name) left it.
                if self.is_leading() {
                    self.last_renew = None;
                    self.observe(spec, now);
                    return Decision::Clash;
                }
                let changed = self.observed.as_ref().is_some_and(|(seen, _)| {
                    seen.holder_identity == spec.holder_identity && seen != spec
                });
                let first_seen = self.observe(spec, now);
                if changed {
                    // Renewed meanwhile: a live process holds it under our name.
                    Decision::Clash
                } else if now.saturating_duration_since(first_seen) >= self.valid_for(spec) {
                    // Left unrenewed for its duration: whoever wrote it is gone.
                    Decision::Acquire
                } else {
                    Decision::StandBy {
                        holder: holder.to_string(),
                    }
                }
            }
            (Some(holder), Some(spec)) => {
                let holder = holder.to_string();
                if self.is_leading() {
                    // Someone took over: by their clock our renewals had stopped.
                    self.last_renew = None;
                    self.observe(spec, now);
                    return Decision::Lost {
                        holder: Some(holder),
                    };
                }
                let first_seen = self.observe(spec, now);
                if now.saturating_duration_since(first_seen) >= self.valid_for(spec) {
                    Decision::Acquire
                } else {
                    Decision::StandBy { holder }
                }
            }
            // Absent, or released (no holder): free for the taking.
            _ => {
                self.observed = None;
                Decision::Acquire
            }
        }
    }

    /// Until when, by the local clock, another replica's record counts as valid: from when
    /// it was first seen unchanged, for the duration it states. `None` when no other holder
    /// is known (the Lease is absent, released or ours).
    pub fn other_holder_valid_until(&self) -> Option<Instant> {
        let (spec, since) = self.observed.as_ref()?;
        spec.holder_identity
            .as_deref()
            .filter(|h| !h.is_empty() && *h != self.identity)?;
        Some(*since + self.valid_for(spec))
    }

    /// How long a record stays valid without a change: its own duration, else ours.
    fn valid_for(&self, spec: &LeaseSpec) -> Duration {
        spec.lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(self.lease_duration, Duration::from_secs)
    }

    /// Is `spec` one of the records this process sent?
    pub fn is_ours(&self, spec: &LeaseSpec) -> bool {
        self.sent.iter().any(|s| same_record(s, spec))
    }

    /// Remembers a record about to be written (acquire or renew), before the write: should
    /// the write land without our hearing of it, the next read still knows it as ours.
    pub fn sending(&mut self, spec: &LeaseSpec) {
        if self.sent.len() == SENT_KEPT {
            self.sent.pop_front();
        }
        self.sent.push_back(spec.clone());
    }

    /// Our acquire or renew write, sent in the round that started at `round_started`,
    /// succeeded. Returns true when this made us the leader (a transition).
    pub fn renewed(&mut self, round_started: Instant) -> bool {
        let acquired = !self.is_leading();
        self.last_renew = Some(round_started);
        self.observed = None;
        acquired
    }

    /// A round failed (read or write error, a conflict, a timeout). While we lead, we step
    /// down once the renew deadline has passed: returns `Lost` then.
    pub fn round_failed(&mut self, now: Instant) -> Option<Decision> {
        self.check_deadline(now)
    }

    /// Stops leading (shutdown); the caller releases the Lease.
    pub fn step_down(&mut self) {
        self.last_renew = None;
    }

    fn check_deadline(&mut self, now: Instant) -> Option<Decision> {
        let until = self.leading_until()?;
        if now >= until {
            self.last_renew = None;
            Some(Decision::Lost { holder: None })
        } else {
            None
        }
    }

    /// Remembers another holder's record; returns when it was first seen unchanged.
    fn observe(&mut self, spec: &LeaseSpec, now: Instant) -> Instant {
        match &self.observed {
            Some((seen, since)) if seen == spec => *since,
            _ => {
                self.observed = Some((spec.clone(), now));
                now
            }
        }
    }
}

/// The Lease that makes `identity` the holder: a new one when `current` is `None`, else
/// `current` (with its resourceVersion, for optimistic concurrency) taken over.
pub fn acquired_lease(current: Option<&Lease>, config: &LeaderConfig, now: Timestamp) -> Lease {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(config.lease_name.clone()),
            namespace: Some(config.namespace.clone()),
            owner_references: config.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    lease.metadata.managed_fields = None;
    let old = lease.spec.take().unwrap_or_default();
    let changed_hands =
        current.is_some() && old.holder_identity.as_deref() != Some(config.identity.as_str());
    let transitions = old.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(config.lease_duration_seconds()),
        lease_transitions: Some(if changed_hands {
            transitions.saturating_add(1)
        } else {
            transitions
        }),
        ..old
    });
    lease
}

/// `current`, which names `identity`, renewed at `now`.
pub fn renewed_lease(current: &Lease, config: &LeaderConfig, now: Timestamp) -> Lease {
    let mut lease = current.clone();
    lease.metadata.managed_fields = None;
    let old = lease.spec.take().unwrap_or_default();
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        acquire_time: old.acquire_time.clone().or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(config.lease_duration_seconds()),
        ..old
    });
    lease
}

/// Is the Lease free for the taking: absent, or released (no holder)?
pub fn is_free(lease: Option<&Lease>) -> bool {
    lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

/// `current` given up at `now`: no holder and a one-second duration, so any other replica
/// acquires it on its next round.
pub fn released_lease(current: &Lease, now: Timestamp) -> Lease {
    let mut lease = current.clone();
    lease.metadata.managed_fields = None;
    let old = lease.spec.take().unwrap_or_default();
    lease.spec = Some(LeaseSpec {
        holder_identity: None,
        acquire_time: None,
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(1),
        ..old
    });
    lease
}

/// What the handle reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderState {
    /// This replica leads (as of its last round).
    pub leading: bool,
    /// The holder named in the Lease as last read (ourselves while leading).
    pub holder: Option<String>,
    /// Until when leadership counts by the local clock; see [`LeaderConfig::renew_deadline`].
    pub leading_until: Option<Instant>,
    /// While another replica holds the Lease: until when its record counts as valid by the
    /// local clock (see [`Election::other_holder_valid_until`]).
    pub holder_valid_until: Option<Instant>,
}

/// Who leads, as one replica sees it at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// This replica leads, and its last renewal is recent enough that no other can have
    /// taken over.
    Leading,
    /// Another replica holds a Lease that has not expired: this one stands by.
    StandingBy { holder: String },
    /// Nobody leads that this replica knows of: the Lease is absent, released or expired,
    /// or this replica's own leadership ran out. Someone (maybe this replica) takes over
    /// on the next successful round.
    NoLeader,
}

/// Who leads according to `state` (what `identity`'s elector last published) at `now`.
pub fn role(state: &LeaderState, identity: &str, now: Instant) -> Role {
    if state.leading && state.leading_until.is_some_and(|until| now < until) {
        return Role::Leading;
    }
    match (&state.holder, state.holder_valid_until) {
        (Some(holder), Some(until)) if !state.leading && holder != identity && now < until => {
            Role::StandingBy {
                holder: holder.clone(),
            }
        }
        _ => Role::NoLeader,
    }
}

/// A cheap, clonable view of one elector, for whoever writes.
#[derive(Clone, Debug)]
pub struct LeaderHandle {
    identity: Arc<str>,
    lease: Arc<str>,
    state: watch::Receiver<LeaderState>,
}

impl LeaderHandle {
    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// True while the elector runs and its last round left this replica leading. Before a
    /// write, ask [`LeaderHandle::still_leading`] instead.
    pub fn is_leader(&self) -> bool {
        self.elector_running() && self.state.borrow().leading
    }

    /// True when the elector runs, this replica leads and its last renewal is recent enough
    /// by the local clock that no other replica can have taken over. Call right before
    /// every write.
    pub fn still_leading(&self) -> bool {
        self.still_leading_at(Instant::now())
    }

    /// [`LeaderHandle::still_leading`] at `now`.
    pub fn still_leading_at(&self, now: Instant) -> bool {
        if !self.elector_running() {
            return false;
        }
        let state = self.state.borrow();
        state.leading && state.leading_until.is_some_and(|until| now < until)
    }

    /// The holder named in the Lease as last read, if any.
    pub fn holder(&self) -> Option<String> {
        self.state.borrow().holder.clone()
    }

    pub fn state(&self) -> LeaderState {
        self.state.borrow().clone()
    }

    /// Who leads at `now`, as this replica sees it ([`role`]); nobody once the elector
    /// has stopped.
    pub fn role_at(&self, now: Instant) -> Role {
        if !self.elector_running() {
            return Role::NoLeader;
        }
        role(&self.state.borrow(), &self.identity, now)
    }

    /// A receiver notified on every transition (acquired, lost, another holder), not on
    /// every renewal. It reports an error once the elector has stopped.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state.clone()
    }

    /// Waits until this replica leads. Fails when the elector stops first.
    pub async fn wait_until_leading(&self) -> Result<(), Error> {
        self.wait_for(|s| s.leading).await
    }

    /// Waits until this replica does not lead (it lost, or never led). Succeeds too when the
    /// elector has stopped, since a stopped elector leads nothing.
    pub async fn wait_until_not_leading(&self) {
        // An error means the elector stopped: it no longer leads either.
        let _stopped = self.wait_for(|s| !s.leading).await;
    }

    fn elector_running(&self) -> bool {
        self.state.has_changed().is_ok()
    }

    async fn wait_for(&self, mut done: impl FnMut(&LeaderState) -> bool) -> Result<(), Error> {
        let mut rx = self.state.clone();
        rx.wait_for(|s| done(s))
            .await
            .map(|_| ())
            .map_err(|_closed| Error::ElectorStopped {
                lease: self.lease.to_string(),
            })
    }
}

/// The loop that reads and writes the Lease for one replica.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    election: Election,
    state: watch::Sender<LeaderState>,
    handle: LeaderHandle,
    /// Told after every round: it turned, and whether the API answered.
    health: Option<Reporter>,
    /// An identity clash was logged and has not ended (logged once per clash).
    clash_reported: bool,
}

/// Why a write did not go through.
enum WriteFailure {
    /// 409: someone else wrote the Lease since we read it.
    Conflict,
    Other(Error),
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaderConfig) -> Result<Self, Error> {
        config.validate()?;
        let (state, rx) = watch::channel(LeaderState {
            leading: false,
            holder: None,
            leading_until: None,
            holder_valid_until: None,
        });
        let handle = LeaderHandle {
            identity: config.identity.as_str().into(),
            lease: config.lease_ref().into(),
            state: rx,
        };
        Ok(LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            election: Election::from_config(&config),
            config,
            state,
            handle,
            health: None,
            clash_reported: false,
        })
    }

    pub fn handle(&self) -> LeaderHandle {
        self.handle.clone()
    }

    /// Reports every round to `reporter` (`/healthz`): progress when the API answered
    /// (a conflict included), a failure when it did not or the round timed out.
    pub fn report_health(mut self, reporter: Reporter) -> Self {
        self.health = Some(reporter);
        self
    }

    fn turned(&self, outcome: Result<(), &dyn std::fmt::Display>) {
        match (&self.health, outcome) {
            (Some(h), Ok(())) => h.progress(),
            (Some(h), Err(e)) => h.failed(e),
            (None, _) => {}
        }
    }

    /// Contends for the Lease until `cancel` fires, then releases it if this replica holds
    /// it, so another replica takes over: a standby watching the Lease contends as soon as
    /// it sees it released, without waiting for its next round. Errors talking to the API are
    /// logged and retried; only a failed release is returned.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), Error> {
        info!(
            identity = %self.config.identity,
            lease = %self.config.lease_ref(),
            "leader election started"
        );
        // Between rounds the Lease is watched, so a leader whose Lease is deleted or
        // taken stops writing at once, not at its next round.
        let watch_config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.config.lease_name));
        let mut lease_events =
            std::pin::pin!(watcher::watcher(self.api.clone(), watch_config).default_backoff());
        loop {
            let round_started = Instant::now();
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                outcome = tokio::time::timeout(self.config.renew_deadline, self.round(round_started)) => {
                    if outcome.is_err() {
                        warn!(
                            identity = %self.config.identity,
                            lease = %self.config.lease_ref(),
                            after = ?self.config.renew_deadline,
                            "lease round timed out"
                        );
                        self.turned(Err(&Error::LeaseTimeout {
                            lease: self.config.lease_ref(),
                            action: "read or write",
                            after: self.config.renew_deadline,
                        }));
                        self.round_failed();
                    }
                }
            }
            let next_round = tokio::time::Instant::now() + self.config.retry_period;
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return self.release().await,
                    () = tokio::time::sleep_until(next_round) => break,
                    event = lease_events.next() => match event {
                        Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) => {
                            let standby = !self.election.is_leading();
                            self.seen_between_rounds(Some(&lease));
                            // Released by a leader that stopped: contend now, not at the
                            // next round (a graceful handover in a watch event's time).
                            if standby && is_free(Some(&lease)) {
                                break;
                            }
                        }
                        Some(Ok(watcher::Event::Delete(_))) => {
                            let standby = !self.election.is_leading();
                            self.seen_between_rounds(None);
                            if standby {
                                break;
                            }
                        }
                        Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                        // The watch retries on its own (with backoff); rounds go on regardless.
                        Some(Err(e)) => debug!(error = %e, "lease watch failed; it retries"),
                        None => tokio::time::sleep_until(next_round).await,
                    },
                }
            }
        }
        self.release().await
    }

    /// The Lease as the watch shows it between rounds (`None`: deleted). A leader that
    /// sees it gone, or naming another holder, or holding a record it did not write,
    /// stops leading now; the next round decides what comes after (a deleted Lease is
    /// created again). Nothing is written here.
    fn seen_between_rounds(&mut self, lease: Option<&Lease>) {
        if !self.election.is_leading() {
            return;
        }
        let decision = match lease {
            None => {
                self.election.step_down();
                Decision::Lost { holder: None }
            }
            Some(l) => self.election.decide(Some(l), Instant::now()),
        };
        match decision {
            Decision::Lost { holder } => {
                self.lost(holder, "the lease was deleted or changed hands");
            }
            Decision::Clash => self.clashed(),
            Decision::Renew | Decision::Acquire | Decision::StandBy { .. } => {}
        }
    }

    /// One read, decide, write. Failures are logged and fed to the election here.
    async fn round(&mut self, round_started: Instant) {
        let current = match self.api.get_opt(&self.config.lease_name).await {
            Ok(current) => current,
            Err(source) => {
                let e = self.api_error("read", source);
                self.log_error(&e);
                self.turned(Err(&e));
                self.round_failed();
                return;
            }
        };
        let decision = self.election.decide(current.as_ref(), round_started);
        let written = match (&decision, current) {
            (Decision::StandBy { holder }, _) => {
                self.turned(Ok(()));
                self.publish(false, Some(holder.clone()), None);
                return;
            }
            (Decision::Lost { holder }, _) => {
                self.turned(Ok(()));
                self.lost(holder.clone(), "the lease names another holder");
                return;
            }
            (Decision::Clash, _) => {
                self.turned(Ok(()));
                self.clashed();
                return;
            }
            (Decision::Renew, Some(current)) => {
                let lease = renewed_lease(&current, &self.config, Timestamp::now());
                self.remember(&lease);
                self.replace(&lease).await
            }
            (Decision::Acquire, Some(current)) => {
                let lease = acquired_lease(Some(&current), &self.config, Timestamp::now());
                self.remember(&lease);
                self.replace(&lease).await
            }
            // `Renew` only comes with a Lease naming us; absent, it is created anew.
            (Decision::Acquire | Decision::Renew, None) => {
                let lease = acquired_lease(None, &self.config, Timestamp::now());
                self.remember(&lease);
                self.create(&lease).await
            }
        };
        self.clash_reported = false;
        // A conflict is an answer too: the API works, someone else wrote first.
        match &written {
            Ok(()) | Err(WriteFailure::Conflict) => self.turned(Ok(())),
            Err(WriteFailure::Other(e)) => self.turned(Err(e)),
        }
        match written {
            Ok(()) => {
                if self.election.renewed(round_started) {
                    info!(
                        identity = %self.config.identity,
                        lease = %self.config.lease_ref(),
                        "acquired leadership"
                    );
                }
                self.publish(
                    true,
                    Some(self.config.identity.clone()),
                    self.election.leading_until(),
                );
            }
            Err(WriteFailure::Conflict) => {
                debug!(
                    identity = %self.config.identity,
                    lease = %self.config.lease_ref(),
                    ?decision,
                    "someone else wrote the lease first; retrying next round"
                );
                self.round_failed();
            }
            Err(WriteFailure::Other(e)) => {
                self.log_error(&e);
                self.round_failed();
            }
        }
    }

    /// Stops leading because another holder (or none) was seen, and says why.
    fn lost(&self, holder: Option<String>, why: &str) {
        warn!(
            identity = %self.config.identity,
            lease = %self.config.lease_ref(),
            holder = holder.as_deref().unwrap_or(""),
            "lost leadership: {why}"
        );
        self.publish(false, holder, None);
    }

    /// Another process writes the Lease under this replica's identity: not leading while
    /// it does (logged once per clash).
    fn clashed(&mut self) {
        if !self.clash_reported {
            error!(
                identity = %self.config.identity,
                lease = %self.config.lease_ref(),
                "another process writes the lease under this replica's identity: not leading while it does; give every replica its own --identity"
            );
            self.clash_reported = true;
        }
        self.publish(false, Some(self.config.identity.clone()), None);
    }

    fn remember(&mut self, lease: &Lease) {
        if let Some(spec) = &lease.spec {
            self.election.sending(spec);
        }
    }

    async fn replace(&self, lease: &Lease) -> Result<(), WriteFailure> {
        let result = self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), lease)
            .await;
        self.write_result(result, "replace")
    }

    async fn create(&self, lease: &Lease) -> Result<(), WriteFailure> {
        let result = self.api.create(&PostParams::default(), lease).await;
        self.write_result(result, "create")
    }

    fn write_result(
        &self,
        result: Result<Lease, kube::Error>,
        action: &'static str,
    ) -> Result<(), WriteFailure> {
        match result {
            Ok(_) => Ok(()),
            // Conflict on replace, AlreadyExists on create: both 409, both "lost the race".
            Err(kube::Error::Api(status)) if status.code == 409 => Err(WriteFailure::Conflict),
            Err(source) => Err(WriteFailure::Other(self.api_error(action, source))),
        }
    }

    fn round_failed(&mut self) {
        if let Some(Decision::Lost { .. }) = self.election.round_failed(Instant::now()) {
            warn!(
                identity = %self.config.identity,
                lease = %self.config.lease_ref(),
                deadline = ?self.config.renew_deadline,
                "lost leadership: could not renew the lease within the renew deadline"
            );
            self.publish(false, None, None);
        }
    }

    /// Steps down first (so nothing is written after this point), then hands the Lease back
    /// if it still names us; also when an interrupted write may have made us the holder.
    async fn release(&mut self) -> Result<(), Error> {
        let was_leading = self.election.is_leading();
        self.election.step_down();
        self.publish(false, None, None);
        let lease = self.config.lease_ref();
        let deadline = self.config.renew_deadline;
        let released = tokio::time::timeout(deadline, async {
            let current = self
                .api
                .get_opt(&self.config.lease_name)
                .await
                .map_err(|e| self.api_error("read", e))?;
            let Some(current) = current else {
                return Ok(false);
            };
            // Ours only if this process wrote it: a record another process wrote under
            // our identity is not ours to give away.
            let ours = current.spec.as_ref().is_some_and(|s| {
                s.holder_identity.as_deref() == Some(self.config.identity.as_str())
                    && self.election.is_ours(s)
            });
            if !ours {
                return Ok(false);
            }
            match self
                .api
                .replace(
                    &self.config.lease_name,
                    &PostParams::default(),
                    &released_lease(&current, Timestamp::now()),
                )
                .await
            {
                Ok(_) => Ok(true),
                // Someone else wrote it meanwhile: it is not ours to release any more.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(self.api_error("release", e)),
            }
        })
        .await
        .unwrap_or_else(|_elapsed| {
            Err(Error::LeaseTimeout {
                lease: lease.clone(),
                action: "release",
                after: deadline,
            })
        });
        match &released {
            Ok(true) => info!(
                identity = %self.config.identity,
                lease = %lease,
                "released the lease on shutdown"
            ),
            Ok(false) if was_leading => info!(
                identity = %self.config.identity,
                lease = %lease,
                "stopped; the lease was no longer ours to release"
            ),
            Ok(false) => debug!(identity = %self.config.identity, lease = %lease, "stopped"),
            Err(e) => self.log_error(e),
        }
        released.map(|_| ())
    }

    /// Updates the handle; subscribers are woken on transitions only, not on renewals.
    fn publish(&self, leading: bool, holder: Option<String>, leading_until: Option<Instant>) {
        self.state.send_if_modified(|state| {
            let transition = state.leading != leading || state.holder != holder;
            if transition
                && !leading
                && let Some(holder) = &holder
            {
                info!(
                    identity = %self.config.identity,
                    lease = %self.config.lease_ref(),
                    holder = %holder,
                    "standing by: another replica leads"
                );
            }
            *state = LeaderState {
                leading,
                holder,
                leading_until,
                // Stored without waking anyone: it moves with every renewal of the holder.
                holder_valid_until: self.election.other_holder_valid_until(),
            };
            transition
        });
    }

    fn api_error(&self, action: &'static str, source: kube::Error) -> Error {
        Error::LeaseApi {
            lease: self.config.lease_ref(),
            action,
            source,
        }
    }

    fn log_error(&self, error: &Error) {
        let source = std::error::Error::source(error).map(ToString::to_string);
        warn!(
            identity = %self.config.identity,
            error = %error,
            source = source.as_deref().unwrap_or(""),
            "leader election"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);
    const RENEW: Duration = Duration::from_secs(10);

    fn config(identity: &str) -> LeaderConfig {
        LeaderConfig::new("ferrolb-controller", "ferrolb-system", identity)
    }

    fn lease(holder: Option<&str>, renew_secs: i64, duration: i32) -> Lease {
        let at = Timestamp::from_second(1_700_000_000 + renew_secs).unwrap();
        Lease {
            metadata: ObjectMeta {
                name: Some("ferrolb-controller".into()),
                namespace: Some("ferrolb-system".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                acquire_time: Some(MicroTime(at)),
                renew_time: Some(MicroTime(at)),
                lease_duration_seconds: Some(duration),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_absent_lease_is_acquired() {
        let mut e = Election::new("a", LEASE, RENEW);
        assert_eq!(e.decide(None, Instant::now()), Decision::Acquire);
        assert!(
            !e.is_leading(),
            "leading starts with a successful write, not a decision"
        );
    }

    #[test]
    fn absent_and_released_leases_are_free_and_held_ones_are_not() {
        assert!(is_free(None));
        assert!(is_free(Some(&lease(None, 0, 1))));
        assert!(is_free(Some(&lease(Some(""), 0, 1))));
        assert!(is_free(Some(&released_lease(
            &lease(Some("a"), 0, 15),
            Timestamp::now()
        ))));
        assert!(!is_free(Some(&lease(Some("a"), 0, 15))));
    }

    #[test]
    fn a_released_lease_is_acquired_at_once() {
        let mut e = Election::new("a", LEASE, RENEW);
        for holder in [None, Some("")] {
            let l = lease(holder, 0, 1);
            assert_eq!(e.decide(Some(&l), Instant::now()), Decision::Acquire);
        }
    }

    #[test]
    fn another_holders_lease_is_respected_until_it_stays_unrenewed_for_its_duration() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LEASE, RENEW);
        let held = lease(Some("a"), 0, 15);
        let standby = Decision::StandBy { holder: "a".into() };
        assert_eq!(e.decide(Some(&held), t0), standby);
        assert_eq!(e.decide(Some(&held), t0 + secs(14)), standby);
        assert_eq!(e.decide(Some(&held), t0 + secs(15)), Decision::Acquire);
    }

    #[test]
    fn every_renewal_by_the_holder_restarts_the_wait() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LEASE, RENEW);
        for i in 0..10u64 {
            let l = lease(Some("a"), i64::try_from(i).unwrap() * 10, 15);
            assert!(matches!(
                e.decide(Some(&l), t0 + secs(i * 10)),
                Decision::StandBy { .. }
            ));
        }
        // The last record (seen at t0+90s) expires 15 s later by our own clock.
        let last = lease(Some("a"), 90, 15);
        assert!(matches!(
            e.decide(Some(&last), t0 + secs(104)),
            Decision::StandBy { .. }
        ));
        assert_eq!(e.decide(Some(&last), t0 + secs(105)), Decision::Acquire);
    }

    #[test]
    fn expiry_uses_the_duration_written_in_the_lease() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LEASE, RENEW);
        let short = lease(Some("a"), 0, 2);
        assert!(matches!(
            e.decide(Some(&short), t0),
            Decision::StandBy { .. }
        ));
        assert_eq!(e.decide(Some(&short), t0 + secs(2)), Decision::Acquire);
    }

    #[test]
    fn a_stale_renew_time_alone_does_not_expire_a_lease_we_just_started_watching() {
        // renewTime is years in the past by the wall clock, but we only trust our own clock.
        let mut e = Election::new("b", LEASE, RENEW);
        let old = lease(Some("a"), -100_000_000, 15);
        assert!(matches!(
            e.decide(Some(&old), Instant::now()),
            Decision::StandBy { .. }
        ));
    }

    #[test]
    fn the_leader_renews_while_the_lease_names_it() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        assert_eq!(e.decide(None, t0), Decision::Acquire);
        assert!(e.renewed(t0), "the first successful write is a transition");
        assert!(e.is_leading());
        assert_eq!(e.leading_until(), Some(t0 + RENEW));
        let ours = lease(Some("a"), 0, 15);
        e.sending(ours.spec.as_ref().unwrap());
        assert_eq!(e.decide(Some(&ours), t0 + secs(2)), Decision::Renew);
        assert!(!e.renewed(t0 + secs(2)), "a renewal is not a transition");
        assert_eq!(e.leading_until(), Some(t0 + secs(2) + RENEW));
    }

    #[test]
    fn a_record_naming_us_that_we_did_not_write_is_waited_out_like_anyone_elses() {
        // Left by an earlier process under the same identity: taken once it stays
        // unrenewed for its duration, not at once.
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        let left = lease(Some("a"), 0, 15);
        let standby = Decision::StandBy { holder: "a".into() };
        assert_eq!(e.decide(Some(&left), t0), standby);
        assert_eq!(e.decide(Some(&left), t0 + secs(14)), standby);
        assert_eq!(e.decide(Some(&left), t0 + secs(15)), Decision::Acquire);
    }

    #[test]
    fn a_record_naming_us_that_someone_else_renews_is_a_clash_and_never_acquired() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        assert!(matches!(
            e.decide(Some(&lease(Some("a"), 0, 15)), t0),
            Decision::StandBy { .. }
        ));
        for i in 1..20u64 {
            let renewed = lease(Some("a"), i64::try_from(i).unwrap(), 15);
            assert_eq!(e.decide(Some(&renewed), t0 + secs(i * 2)), Decision::Clash);
            assert!(!e.is_leading());
        }
    }

    #[test]
    fn a_leader_that_reads_a_record_it_did_not_write_under_its_name_steps_down() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        let mine = lease(Some("a"), 0, 15);
        e.sending(mine.spec.as_ref().unwrap());
        e.renewed(t0);
        assert_eq!(e.decide(Some(&mine), t0 + secs(1)), Decision::Renew);
        // Another process with our identity renewed it in between.
        let theirs = lease(Some("a"), 1, 15);
        assert_eq!(e.decide(Some(&theirs), t0 + secs(2)), Decision::Clash);
        assert!(!e.is_leading());
        assert_eq!(e.leading_until(), None);
    }

    #[test]
    fn a_write_that_timed_out_but_landed_is_still_known_as_ours() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        let first = lease(Some("a"), 0, 15);
        e.sending(first.spec.as_ref().unwrap());
        e.renewed(t0);
        // The next renewal was sent, its answer lost; the read shows it landed.
        let second = lease(Some("a"), 2, 15);
        e.sending(second.spec.as_ref().unwrap());
        assert_eq!(e.round_failed(t0 + secs(2)), None);
        assert_eq!(e.decide(Some(&second), t0 + secs(3)), Decision::Renew);
    }

    #[test]
    fn records_compare_at_the_api_servers_microsecond_precision() {
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let spec = |t: Timestamp| LeaseSpec {
            holder_identity: Some("a".into()),
            renew_time: Some(MicroTime(t)),
            ..LeaseSpec::default()
        };
        let nanos = at + std::time::Duration::from_nanos(1_234_567);
        let micros = at + std::time::Duration::from_micros(1_234);
        assert!(same_record(&spec(nanos), &spec(micros)));
        assert!(!same_record(&spec(nanos), &spec(at)));
    }

    #[test]
    fn the_leader_loses_when_another_holder_appears() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        e.decide(None, t0);
        e.renewed(t0);
        let theirs = lease(Some("b"), 0, 15);
        assert_eq!(
            e.decide(Some(&theirs), t0 + secs(1)),
            Decision::Lost {
                holder: Some("b".into())
            }
        );
        assert!(!e.is_leading());
        assert_eq!(e.leading_until(), None);
        // Afterwards it is an ordinary standby.
        assert_eq!(
            e.decide(Some(&theirs), t0 + secs(2)),
            Decision::StandBy { holder: "b".into() }
        );
    }

    #[test]
    fn the_leader_steps_down_when_renewals_fail_past_the_deadline() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        e.decide(None, t0);
        e.renewed(t0);
        assert_eq!(e.round_failed(t0 + secs(5)), None, "within the deadline");
        assert!(e.is_leading());
        assert_eq!(
            e.round_failed(t0 + RENEW),
            Some(Decision::Lost { holder: None })
        );
        assert!(!e.is_leading());
        assert_eq!(e.round_failed(t0 + secs(30)), None, "lost only once");
    }

    #[test]
    fn a_late_read_after_the_deadline_is_a_loss_then_a_fresh_acquire() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        e.decide(None, t0);
        let ours = lease(Some("a"), 0, 15);
        e.sending(ours.spec.as_ref().unwrap());
        e.renewed(t0);
        assert_eq!(
            e.decide(Some(&ours), t0 + secs(11)),
            Decision::Lost { holder: None }
        );
        assert_eq!(e.decide(Some(&ours), t0 + secs(12)), Decision::Acquire);
    }

    #[test]
    fn a_standby_knows_until_when_the_holders_record_is_valid() {
        let t0 = Instant::now();
        let mut e = Election::new("b", LEASE, RENEW);
        assert_eq!(e.other_holder_valid_until(), None);
        let held = lease(Some("a"), 0, 15);
        e.decide(Some(&held), t0);
        assert_eq!(e.other_holder_valid_until(), Some(t0 + secs(15)));
        // Unchanged later: still counted from when it was first seen.
        e.decide(Some(&held), t0 + secs(5));
        assert_eq!(e.other_holder_valid_until(), Some(t0 + secs(15)));
        // Renewed: valid for another duration from now.
        let renewed = lease(Some("a"), 5, 15);
        e.decide(Some(&renewed), t0 + secs(6));
        assert_eq!(e.other_holder_valid_until(), Some(t0 + secs(21)));
        // Released: nobody else holds it.
        e.decide(Some(&lease(None, 6, 1)), t0 + secs(7));
        assert_eq!(e.other_holder_valid_until(), None);
        // Our own record is not another holder's.
        e.decide(Some(&lease(Some("b"), 7, 15)), t0 + secs(8));
        assert_eq!(e.other_holder_valid_until(), None);
    }

    fn state(
        leading: bool,
        holder: Option<&str>,
        leading_until: Option<Instant>,
        holder_valid_until: Option<Instant>,
    ) -> LeaderState {
        LeaderState {
            leading,
            holder: holder.map(String::from),
            leading_until,
            holder_valid_until,
        }
    }

    #[test]
    fn the_role_follows_the_lease_and_the_local_clock() {
        let t0 = Instant::now();
        let standby = Role::StandingBy { holder: "a".into() };
        assert_eq!(
            role(&state(false, None, None, None), "b", t0),
            Role::NoLeader,
            "starting"
        );
        let leading = state(true, Some("b"), Some(t0 + RENEW), None);
        assert_eq!(role(&leading, "b", t0), Role::Leading);
        assert_eq!(
            role(&leading, "b", t0 + RENEW),
            Role::NoLeader,
            "a leader that could not renew within the deadline leads no more"
        );
        let behind = state(false, Some("a"), None, Some(t0 + LEASE));
        assert_eq!(role(&behind, "b", t0), standby);
        assert_eq!(
            role(&behind, "b", t0 + LEASE),
            Role::NoLeader,
            "the holder stopped renewing: nobody leads until someone takes over"
        );
        assert_eq!(
            role(&state(false, Some("b"), None, Some(t0 + LEASE)), "b", t0),
            Role::NoLeader,
            "our own stale record is no leader"
        );
        assert_eq!(
            role(&state(false, Some("a"), None, None), "b", t0),
            Role::NoLeader,
            "a holder whose validity is unknown counts as none"
        );
    }

    #[test]
    fn stepping_down_ends_leadership() {
        let t0 = Instant::now();
        let mut e = Election::new("a", LEASE, RENEW);
        e.renewed(t0);
        e.step_down();
        assert!(!e.is_leading());
        assert_eq!(e.leading_until(), None);
    }

    #[test]
    fn a_new_lease_carries_the_owner_and_a_taken_one_keeps_its_own() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let owner = crate::owner::to_service_account("ferrolb-controller", "u-1");
        let cfg = config("b").owned_by(Some(owner.clone()));
        let fresh = acquired_lease(None, &cfg, now);
        assert_eq!(fresh.metadata.owner_references, Some(vec![owner]));
        let old = lease(Some("a"), 0, 15);
        let taken = acquired_lease(Some(&old), &cfg, now);
        assert_eq!(
            taken.metadata.owner_references,
            old.metadata.owner_references
        );
        assert_eq!(
            acquired_lease(None, &config("b"), now)
                .metadata
                .owner_references,
            None
        );
    }

    #[test]
    fn acquiring_builds_a_new_lease_or_takes_over_the_old_one() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let cfg = config("b");

        let fresh = acquired_lease(None, &cfg, now);
        assert_eq!(fresh.metadata.name.as_deref(), Some("ferrolb-controller"));
        assert_eq!(fresh.metadata.namespace.as_deref(), Some("ferrolb-system"));
        let spec = fresh.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));

        let old = lease(Some("a"), 0, 15);
        let taken = acquired_lease(Some(&old), &cfg, now);
        assert_eq!(
            taken.metadata.resource_version.as_deref(),
            Some("42"),
            "the write is conditional on what we read"
        );
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(4), "changed hands");

        let ours = lease(Some("b"), 0, 15);
        let back = acquired_lease(Some(&ours), &cfg, now).spec.unwrap();
        assert_eq!(
            back.lease_transitions,
            Some(3),
            "same holder: no transition"
        );
    }

    #[test]
    fn renewing_moves_only_the_renew_time() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let old = lease(Some("a"), 0, 15);
        let renewed = renewed_lease(&old, &config("a"), now);
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("42"));
        let (old, new) = (old.spec.unwrap(), renewed.spec.unwrap());
        assert_eq!(new.renew_time, Some(MicroTime(now)));
        assert_eq!(new.acquire_time, old.acquire_time);
        assert_eq!(new.lease_transitions, old.lease_transitions);
        assert_eq!(new.holder_identity.as_deref(), Some("a"));
    }

    #[test]
    fn releasing_clears_the_holder_so_others_acquire_at_once() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let released = released_lease(&lease(Some("a"), 0, 15), now);
        assert_eq!(released.metadata.resource_version.as_deref(), Some("42"));
        let spec = released.spec.clone().unwrap();
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3));
        let mut other = Election::new("b", LEASE, RENEW);
        assert_eq!(
            other.decide(Some(&released), Instant::now()),
            Decision::Acquire
        );
    }

    #[test]
    fn config_defaults_and_validation() {
        let cfg = config("a");
        assert_eq!(cfg.lease_duration, secs(15));
        assert_eq!(cfg.renew_deadline, secs(10));
        assert_eq!(cfg.retry_period, secs(2));
        cfg.validate().unwrap();
        assert_eq!(cfg.lease_ref(), "ferrolb-system/ferrolb-controller");

        let bad = [
            config(""),
            cfg.clone().with_timings(secs(10), secs(10), secs(2)),
            cfg.clone().with_timings(secs(15), secs(2), secs(2)),
            cfg.clone().with_timings(secs(15), secs(10), Duration::ZERO),
        ];
        for b in bad {
            let err = b.validate().unwrap_err();
            assert!(matches!(err, Error::LeaseConfig { .. }), "{err}");
        }
    }

    #[test]
    fn the_written_duration_is_rounded_up_to_whole_seconds() {
        let cfg = config("a");
        let ms = Duration::from_millis;
        assert_eq!(
            cfg.clone()
                .with_timings(ms(2000), ms(1000), ms(200))
                .lease_duration_seconds(),
            2
        );
        assert_eq!(
            cfg.clone()
                .with_timings(ms(2500), ms(1000), ms(200))
                .lease_duration_seconds(),
            3
        );
        assert_eq!(
            cfg.with_timings(ms(300), ms(200), ms(100))
                .lease_duration_seconds(),
            1
        );
    }
}
