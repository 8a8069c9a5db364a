//! Building the conditions ferrolb writes (`ferrolb.io/IPAllocated`, `ferrolb.io/Announced`,
//! an IPPool's `Ready` and `Conflict`) the way Kubernetes expects them: the transition time
//! moves only when the status flips, and `observedGeneration` says which spec it is about.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// `"True"` or `"False"`.
pub fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// A condition's content without its transition time: what users read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionContent<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: &'a str,
    /// The `metadata.generation` of the object it was decided for.
    pub observed_generation: Option<i64>,
}

impl ConditionContent<'_> {
    /// True when `current` already says exactly this (ignoring its transition time).
    pub fn is_in(&self, current: Option<&Condition>) -> bool {
        current.is_some_and(|c| {
            c.type_ == self.type_
                && c.status == status_str(self.status)
                && c.reason == self.reason
                && c.message == self.message
                && c.observed_generation == self.observed_generation
        })
    }

    /// The condition to write. `previous` is the object's current condition of that type:
    /// its transition time is kept when the status is unchanged, else it is `now`.
    pub fn build(&self, previous: Option<&Condition>, now: Timestamp) -> Condition {
        let status = status_str(self.status);
        let since = previous
            .filter(|p| p.type_ == self.type_ && p.status == status)
            .map_or(Time(now), |p| p.last_transition_time.clone());
        Condition {
            type_: self.type_.to_string(),
            status: status.to_string(),
            reason: self.reason.to_string(),
            message: self.message.to_string(),
            last_transition_time: since,
            observed_generation: self.observed_generation,
        }
    }
}

/// The condition of type `type_` in `conditions`, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn content(status: bool, message: &str, generation: i64) -> ConditionContent<'_> {
        ConditionContent {
            type_: "Ready",
            status,
            reason: "Ready",
            message,
            observed_generation: Some(generation),
        }
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_flips() {
        let first = content(true, "allocating", 1).build(None, at(0));
        assert_eq!(first.last_transition_time, Time(at(0)));
        let same_status = content(true, "still allocating", 2).build(Some(&first), at(10));
        assert_eq!(same_status.last_transition_time, Time(at(0)));
        assert_eq!(same_status.observed_generation, Some(2));
        let flipped = content(false, "draining", 3).build(Some(&same_status), at(20));
        assert_eq!(flipped.last_transition_time, Time(at(20)));
        assert_eq!(flipped.status, "False");
    }

    #[test]
    fn content_compares_everything_but_the_time() {
        let c = content(true, "allocating", 1).build(None, at(0));
        assert!(content(true, "allocating", 1).is_in(Some(&c)));
        assert!(
            !content(true, "allocating", 2).is_in(Some(&c)),
            "a new generation"
        );
        assert!(!content(false, "allocating", 1).is_in(Some(&c)));
        assert!(!content(true, "other", 1).is_in(Some(&c)));
        assert!(!content(true, "allocating", 1).is_in(None));
        assert_eq!(find(std::slice::from_ref(&c), "Ready"), Some(&c));
        assert_eq!(find(&[c], "Conflict"), None);
    }
}
