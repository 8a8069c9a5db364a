//! What `/healthz` decides, for both binaries: can this process still make progress?
//!
//! A [`Health`] registry holds named components, each with [`Limits`]:
//!
//! - a **loop** that turns on its own (the speaker's election loop ticks every 2 s, the
//!   controller's lease rounds run every retry period) is stuck once it has not turned for
//!   longer than `max_silence`;
//! - a task that **talks to the API** (a watch, the lease) is stuck once its errors have kept
//!   coming for longer than `max_failing` with no success in between;
//! - any component is stuck once its task has **ended** while the process still needs it.
//!
//! A quiet cluster is not stuck: a watch with no events reports nothing and stays healthy.
//! A watch that recovers from an error yields nothing either until the next change (the
//! kube-runtime watcher resumes silently), so errors further apart than `error_gap` count
//! as separate streaks: a streak only lasts while the errors keep coming, as they do while
//! the watcher retries (its backoff waits at most 30 s, up to twice that with jitter).
//!
//! The decision is pure: [`Registry`] takes the time from its caller. [`Health`] is the
//! shared handle that reads the clock; components report through a [`Reporter`], and
//! what a component must not outlive deregisters it with a [`Registration`].
//! This module never decides readiness; that is each binary's own.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Errors further apart than this start a new streak; see the module documentation.
pub const DEFAULT_ERROR_GAP: Duration = Duration::from_secs(120);

/// When a component counts as stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Stuck when it has not turned (reported progress or a failure) for longer than this.
    /// `None` for components that may stay silent (a watch on a quiet cluster).
    pub max_silence: Option<Duration>,
    /// Stuck when failures have kept coming for longer than this without a success.
    /// `None`: failures alone never make it stuck.
    pub max_failing: Option<Duration>,
    /// Failures further apart than this are separate streaks.
    pub error_gap: Duration,
}

impl Limits {
    /// A loop that must turn at least every `max_silence`.
    pub fn turning(max_silence: Duration) -> Limits {
        Limits {
            max_silence: Some(max_silence),
            max_failing: None,
            error_gap: DEFAULT_ERROR_GAP,
        }
    }

    /// A task calling the API (a watch) that may be silent but must not fail continuously
    /// for longer than `max_failing`; `None` never counts its failures.
    pub fn calling_api(max_failing: Option<Duration>) -> Limits {
        Limits {
            max_silence: None,
            max_failing,
            error_gap: DEFAULT_ERROR_GAP,
        }
    }

    /// Both: a loop that turns and calls the API each time (the lease rounds).
    pub fn turning_and_calling_api(max_silence: Duration, max_failing: Option<Duration>) -> Limits {
        Limits {
            max_silence: Some(max_silence),
            max_failing,
            error_gap: DEFAULT_ERROR_GAP,
        }
    }
}

/// Why one component is stuck. Its `Display` is what `/healthz` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Silent {
        component: String,
        since: Duration,
        allowed: Duration,
    },
    Failing {
        component: String,
        since: Duration,
        allowed: Duration,
        last_error: String,
    },
    Ended {
        component: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Silent {
                component,
                since,
                allowed,
            } => write!(
                f,
                "{component}: has not turned for {}s (allowed: {}s)",
                since.as_secs(),
                allowed.as_secs()
            ),
            Problem::Failing {
                component,
                since,
                allowed,
                last_error,
            } => write!(
                f,
                "{component}: failing for {}s without a success (allowed: {}s); last error: {last_error}",
                since.as_secs(),
                allowed.as_secs()
            ),
            Problem::Ended { component } => write!(f, "{component}: has stopped"),
        }
    }
}

#[derive(Clone, Debug)]
struct Component {
    limits: Limits,
    last_turn: Instant,
    /// First and last failure of the current streak, and what the last one said.
    streak: Option<(Instant, Instant, String)>,
    ended: bool,
}

/// The components and what they last reported; no clock of its own.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    components: BTreeMap<String, Component>,
}

impl Registry {
    /// Adds `name` (or starts it afresh), as having just turned.
    pub fn register(&mut self, name: &str, limits: Limits, now: Instant) {
        self.components.insert(
            name.to_string(),
            Component {
                limits,
                last_turn: now,
                streak: None,
                ended: false,
            },
        );
    }

    /// Removes `name`: the process no longer needs it (say, a standby stopped its watches).
    pub fn deregister(&mut self, name: &str) {
        self.components.remove(name);
    }

    /// `name` turned, or its call or watch succeeded: a failure streak ends. Unknown names
    /// are ignored (a late report from a component already deregistered).
    pub fn progress(&mut self, name: &str, now: Instant) {
        if let Some(c) = self.components.get_mut(name) {
            c.last_turn = now;
            c.streak = None;
        }
    }

    /// `name` turned but failed with `error`.
    pub fn failed(&mut self, name: &str, error: &str, now: Instant) {
        if let Some(c) = self.components.get_mut(name) {
            c.last_turn = now;
            let first = match &c.streak {
                Some((first, last, _))
                    if now.saturating_duration_since(*last) <= c.limits.error_gap =>
                {
                    *first
                }
                _ => now,
            };
            c.streak = Some((first, now, error.to_string()));
        }
    }

    /// `name`'s task has stopped although the process still needs it.
    pub fn ended(&mut self, name: &str) {
        if let Some(c) = self.components.get_mut(name) {
            c.ended = true;
        }
    }

    /// What is stuck at `now`, by component name; empty when the process can make progress.
    pub fn check(&self, now: Instant) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (name, c) in &self.components {
            let component = name.clone();
            if c.ended {
                problems.push(Problem::Ended { component });
                continue;
            }
            let silent = now.saturating_duration_since(c.last_turn);
            if let Some(allowed) = c.limits.max_silence
                && silent > allowed
            {
                problems.push(Problem::Silent {
                    component,
                    since: silent,
                    allowed,
                });
                continue;
            }
            if let (Some(allowed), Some((first, last, error))) = (c.limits.max_failing, &c.streak) {
                let failing = now.saturating_duration_since(*first);
                let still_coming = now.saturating_duration_since(*last) <= c.limits.error_gap;
                if still_coming && failing > allowed {
                    problems.push(Problem::Failing {
                        component,
                        since: failing,
                        allowed,
                        last_error: error.clone(),
                    });
                }
            }
        }
        problems
    }

    /// The registered component names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.components.keys().map(String::as_str)
    }
}

/// The shared registry behind a lock; clones share it.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Mutex<Registry>>);

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry stays consistent whatever a panicking holder did: every update is one
        // assignment.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `name` and returns what its task reports through.
    pub fn register(&self, name: impl Into<String>, limits: Limits) -> Reporter {
        let name: Arc<str> = name.into().into();
        self.lock().register(&name, limits, Instant::now());
        Reporter {
            health: self.clone(),
            name,
        }
    }

    /// Like [`Health::register`], and deregisters `name` when the returned guard drops.
    pub fn register_scoped(&self, name: impl Into<String>, limits: Limits) -> Registration {
        Registration(self.register(name, limits))
    }

    /// What is stuck now; empty when healthy.
    pub fn check(&self) -> Vec<Problem> {
        self.lock().check(Instant::now())
    }

    /// The registered component names (for logs and tests).
    pub fn names(&self) -> Vec<String> {
        self.lock().names().map(str::to_string).collect()
    }
}

/// How one component reports. Cheap to clone; reports after deregistration are ignored.
#[derive(Clone, Debug)]
pub struct Reporter {
    health: Health,
    name: Arc<str>,
}

impl Reporter {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The component turned, or succeeded.
    pub fn progress(&self) {
        self.health.lock().progress(&self.name, Instant::now());
    }

    /// The component turned but failed.
    pub fn failed(&self, error: &dyn fmt::Display) {
        self.health
            .lock()
            .failed(&self.name, &error.to_string(), Instant::now());
    }

    /// The component's task has stopped for good.
    pub fn ended(&self) {
        self.health.lock().ended(&self.name);
    }
}

/// A registered component that is deregistered when this guard drops.
#[derive(Debug)]
pub struct Registration(Reporter);

impl Registration {
    /// What the component's task reports through.
    pub fn reporter(&self) -> Reporter {
        self.0.clone()
    }
}

impl std::ops::Deref for Registration {
    type Target = Reporter;

    fn deref(&self) -> &Reporter {
        &self.0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.health.lock().deregister(&self.0.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_loop_is_stuck_only_once_it_is_silent_for_longer_than_allowed() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register("election loop", Limits::turning(secs(60)), t0);
        assert!(
            r.check(t0 + secs(60)).is_empty(),
            "exactly the bound is fine"
        );
        r.progress("election loop", t0 + secs(50));
        assert!(r.check(t0 + secs(100)).is_empty());
        let problems = r.check(t0 + secs(111));
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "election loop: has not turned for 61s (allowed: 60s)"
        );
        // A failed turn is still a turn.
        r.failed("election loop", "x", t0 + secs(111));
        assert!(r.check(t0 + secs(112)).is_empty());
    }

    #[test]
    fn a_silent_watch_is_healthy_however_long_the_cluster_is_quiet() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register("Service watch", Limits::calling_api(Some(secs(300))), t0);
        assert!(r.check(t0 + secs(86_400)).is_empty());
    }

    #[test]
    fn a_watch_is_stuck_once_errors_keep_coming_past_the_bound_and_a_success_ends_it() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register("Service watch", Limits::calling_api(Some(secs(300))), t0);
        // The watcher retries at most every minute or so: errors keep coming.
        for s in (0..=300).step_by(30) {
            r.failed("Service watch", "connection refused", t0 + secs(s));
        }
        assert!(
            r.check(t0 + secs(300)).is_empty(),
            "an API restart shorter than the bound is not a reason to restart"
        );
        r.failed("Service watch", "connection refused", t0 + secs(330));
        let problems = r.check(t0 + secs(331));
        assert_eq!(
            problems,
            vec![Problem::Failing {
                component: "Service watch".into(),
                since: secs(331),
                allowed: secs(300),
                last_error: "connection refused".into(),
            }]
        );
        assert!(problems[0].to_string().contains("connection refused"));
        r.progress("Service watch", t0 + secs(340));
        assert!(
            r.check(t0 + secs(341)).is_empty(),
            "one success ends the streak"
        );
    }

    #[test]
    fn errors_that_stop_coming_end_the_streak_as_a_silently_resumed_watch_does() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register("Node watch", Limits::calling_api(Some(secs(300))), t0);
        r.failed("Node watch", "reset", t0);
        r.failed("Node watch", "reset", t0 + secs(100));
        // Resumed at 100 s; nothing changed since, so nothing was reported.
        assert!(
            r.check(t0 + secs(400)).is_empty(),
            "no error for longer than the gap: recovered"
        );
        // A lone error much later starts a new streak rather than extending the old one.
        r.failed("Node watch", "reset", t0 + secs(500));
        assert!(r.check(t0 + secs(510)).is_empty());
    }

    #[test]
    fn failures_count_only_where_a_bound_is_set() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register("IPPool watch", Limits::calling_api(None), t0);
        for s in 0..1000 {
            r.failed("IPPool watch", "forbidden", t0 + secs(s));
        }
        assert!(r.check(t0 + secs(1000)).is_empty());
    }

    #[test]
    fn an_ended_task_is_stuck_and_a_deregistered_one_is_forgotten() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register("Namespace watch", Limits::calling_api(Some(secs(300))), t0);
        r.register("lease", Limits::turning(secs(60)), t0);
        r.ended("Namespace watch");
        let problems = r.check(t0);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].to_string(), "Namespace watch: has stopped");
        r.deregister("Namespace watch");
        assert!(r.check(t0).is_empty());
        // Reports about it are ignored now.
        r.failed("Namespace watch", "late", t0 + secs(1));
        r.ended("Namespace watch");
        assert_eq!(r.names().collect::<Vec<_>>(), ["lease"]);
        // Registering again starts afresh.
        r.ended("lease");
        r.register("lease", Limits::turning(secs(60)), t0 + secs(2));
        assert!(r.check(t0 + secs(3)).is_empty());
    }

    #[test]
    fn every_stuck_component_is_named() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.register("b loop", Limits::turning(secs(1)), t0);
        r.register(
            "a lease",
            Limits::turning_and_calling_api(secs(60), Some(secs(5))),
            t0,
        );
        for s in 0..=10 {
            r.failed("a lease", "timeout", t0 + secs(s));
        }
        let names: Vec<String> = r
            .check(t0 + secs(10))
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names[0].starts_with("a lease: failing for 10s"),
            "{names:?}"
        );
        assert!(names[1].starts_with("b loop: has not turned"), "{names:?}");
    }

    #[test]
    fn the_shared_handle_deregisters_scoped_components_on_drop() {
        let health = Health::new();
        let kept = health.register("loop", Limits::turning(secs(60)));
        {
            let scoped = health.register_scoped("watch", Limits::calling_api(Some(secs(1))));
            scoped.reporter().ended();
            assert_eq!(health.check().len(), 1);
        }
        assert!(health.check().is_empty());
        assert_eq!(health.names(), ["loop"]);
        kept.progress();
        kept.ended();
        assert_eq!(health.check()[0].to_string(), "loop: has stopped");
    }
}
