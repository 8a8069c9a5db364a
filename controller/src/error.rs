//! The controller's one error type. Every message names what went wrong in the user's
//! words; the variants that describe a Service's request are also what its
//! `ferrolb.io/IPAllocated` condition says.

use std::time::Duration;

use ferrolb_crds::Family;
use ferrolb_crds::process::ProcessError;

/// Everything that can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ----- start-up -----
    #[error("--{flag}: {problem}")]
    Flag { flag: &'static str, problem: String },
    #[error("no --identity and no POD_NAME, and the host name cannot be read")]
    Hostname(#[source] std::io::Error),
    #[error(transparent)]
    Process(#[from] ProcessError),

    // ----- a Service's request (the condition's message) -----
    #[error("both {annotation} and spec.loadBalancerIP are set; use one")]
    TwoRequestFields { annotation: &'static str },
    #[error("{value:?} in {field} is not an IP address")]
    NotAnIp { value: String, field: &'static str },
    #[error("{field} asks for more than one {family} address")]
    SecondAddress { family: Family, field: &'static str },

    // ----- leader election -----
    #[error("leader election for lease {lease}: {problem}")]
    LeaseConfig {
        lease: String,
        problem: &'static str,
    },
    #[error("lease {lease}: {action} failed")]
    LeaseApi {
        lease: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("lease {lease}: {action} got no answer within {after:?}")]
    LeaseTimeout {
        lease: String,
        action: &'static str,
        after: Duration,
    },
    #[error("the leader elector for lease {lease} has stopped")]
    ElectorStopped { lease: String },
    #[error(
        "lease {lease}: another process holds it under this replica's identity {identity:?}; refusing to lead with an identity that is not unique (leave --identity unset for a unique one)"
    )]
    IdentityClash { lease: String, identity: String },

    // ----- the speakers' gossip Secret -----
    #[error("gossip Secret {secret}: the operating system's random number generator failed")]
    Random {
        secret: String,
        #[source]
        source: rand::rngs::SysError,
    },
    #[error("gossip Secret {secret}: {action} failed")]
    SecretApi {
        secret: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },

    // ----- reconcile and status writes -----
    #[error("not the leader any more; not writing")]
    NotLeader,
    #[error("writing the status of Service {key}")]
    WriteStatus {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of IPPool {pool}")]
    WritePoolStatus {
        pool: String,
        #[source]
        source: kube::Error,
    },
    #[error("the allocation state is unavailable (a thread panicked while holding it)")]
    Poisoned,
}

impl Error {
    /// The error and its sources on one line, for logs and the binary's last words.
    pub fn chain(&self) -> String {
        ferrolb_crds::process::error_chain(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_every_source() {
        let e = Error::Process(ProcessError::LocalAddr(std::io::Error::other("gone")));
        assert_eq!(
            e.chain(),
            "admin server: cannot read the address it listens on: gone"
        );
        let e = Error::NotAnIp {
            value: "10.0.0.300".into(),
            field: "spec.loadBalancerIP",
        };
        assert_eq!(
            e.to_string(),
            "\"10.0.0.300\" in spec.loadBalancerIP is not an IP address"
        );
    }
}
