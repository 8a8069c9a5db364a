//! The speaker's one error type: what stops the process, and what it waits out while it
//! starts. Every message names what went wrong in the user's words.
//!
//! The packet codecs keep their own vocabulary ([`crate::wire::WireError`]: a frame is
//! dropped, never the process), as do the gossip checks (`membership`): those are verdicts
//! on outside input, logged or counted where they happen.

use std::net::SocketAddr;

use ferrolb_crds::process::ProcessError;

use crate::membership::keys::KeyringError;

/// Everything that can go wrong in the speaker process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ----- start-up -----
    #[error("--{flag}: {problem}")]
    Flag {
        flag: &'static str,
        problem: &'static str,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot bind the gossip socket {addr}")]
    GossipBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {kind} watch stopped before it synced")]
    NotSynced { kind: &'static str },
    #[error("the {task} task panicked")]
    Panicked { task: &'static str },

    // ----- waited out while starting, and while following the gossip Secret -----
    #[error("cannot read Node {node}")]
    ReadNode {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("Node {node} has no InternalIP yet")]
    NoInternalIp { node: String },
    #[error("cannot read Secret {secret}")]
    ReadSecret {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {secret}")]
    SecretKeys {
        secret: String,
        #[source]
        source: KeyringError,
    },
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
        let e = Error::GossipBind {
            addr: "10.0.0.1:7946".parse().expect("an address"),
            source: std::io::Error::other("address in use"),
        };
        assert_eq!(
            e.chain(),
            "cannot bind the gossip socket 10.0.0.1:7946: address in use"
        );
        let e = Error::Flag {
            flag: "stale-after",
            problem: "must be a positive number of seconds",
        };
        assert_eq!(
            e.chain(),
            "--stale-after: must be a positive number of seconds"
        );
    }
}
