//! Faults a lab test puts on a node, undone when dropped (also on a panic).

use super::handle::Lab;
use crate::Result;

const TABLE: &str = "flb-test-no-api";

/// The API server out of reach from `node`'s namespace (TCP to 6443 refused with a reset,
/// open connections to it killed) until dropped. The node stays Ready (the lab's agent,
/// which plays kubelet, runs outside it) and gossip still works.
#[derive(Debug)]
pub struct NoApi<'a> {
    lab: &'a Lab,
    node: String,
}

impl<'a> NoApi<'a> {
    pub fn on(lab: &'a Lab, node: &str) -> Result<NoApi<'a>> {
        for cmd in [
            vec!["add", "table", "inet", TABLE],
            vec![
                "add",
                "chain",
                "inet",
                TABLE,
                "out",
                "{ type filter hook output priority 0; }",
            ],
            vec![
                "add", "rule", "inet", TABLE, "out", "tcp", "dport", "6443", "reject", "with",
                "tcp", "reset",
            ],
        ] {
            lab.exec(node, "nft", &cmd)?;
        }
        let cut = NoApi {
            lab,
            node: node.to_string(),
        };
        // The watches' open connections too.
        lab.exec(node, "ss", &["-K", "-t", "dport", "=", ":6443"])?;
        Ok(cut)
    }
}

impl Drop for NoApi<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .exec(&self.node, "nft", &["delete", "table", "inet", TABLE]);
    }
}
