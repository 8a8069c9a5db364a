//! The I/O shell of forwarding: runs `nft` to load a [`Ruleset`] (only when its text changed
//! since the last load), to remove the table, and to read the table's counters. It owns the
//! table `inet ferrolb` and nothing else: no other table, chain or rule is listed, changed
//! or deleted.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::Ruleset;
use super::nft;

/// Errors of one `nft` run.
#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    #[error("cannot run {nft}: {source}")]
    Spawn {
        nft: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{nft} refused the ruleset: {stderr}")]
    Refused { nft: String, stderr: String },
    #[error("cannot read the table's counters: {0}")]
    Counters(String),
}

/// Packet and connection counts per family, from the table's named counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets rewritten towards a NodePort, IPv4 and IPv6.
    pub forwarded: [u64; 2],
    /// Packets to an owned IP that were not forwarded (another port, a source outside the
    /// ranges), dropped.
    pub dropped: [u64; 2],
    /// New connections (conntrack entries) forwarded.
    pub connections: [u64; 2],
}

impl Counters {
    /// Reads `nft -j list counters table inet ferrolb`.
    pub fn parse(json: &str) -> Result<Counters, String> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let items = v
            .get("nftables")
            .and_then(|n| n.as_array())
            .ok_or("no \"nftables\" array")?;
        let mut c = Counters::default();
        for item in items {
            let Some(counter) = item.get("counter") else {
                continue;
            };
            let name = counter.get("name").and_then(|n| n.as_str()).unwrap_or("");
            let packets = counter
                .get("packets")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let (what, family) = match name.split_at_checked(name.len().saturating_sub(1)) {
                Some((what, "4")) => (what, 0),
                Some((what, "6")) => (what, 1),
                _ => continue,
            };
            match what {
                "forwarded" => c.forwarded[family] = packets,
                "dropped" => c.dropped[family] = packets,
                "connections" => c.connections[family] = packets,
                _ => {}
            }
        }
        Ok(c)
    }
}

/// The speaker's hold on its nftables table.
#[derive(Debug)]
pub struct Kernel {
    /// The `nft` program, with any arguments that come before ours (tests run it in
    /// another network namespace through `ip netns exec NS nft`).
    nft: Vec<String>,
    mark: u32,
    /// The script loaded last; `None` before the first load and after a failure.
    loaded: Option<String>,
}

impl Kernel {
    /// `nft` is the program (`nft`, a path), optionally followed by arguments.
    pub fn new(nft: Vec<String>, mark: u32) -> Kernel {
        Kernel {
            nft,
            mark,
            loaded: None,
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, ForwardingError> {
        let name = self.nft.join(" ");
        let (program, pre) = self
            .nft
            .split_first()
            .ok_or_else(|| ForwardingError::Spawn {
                nft: name.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(pre)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| ForwardingError::Spawn {
            nft: name.clone(),
            source,
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|source| ForwardingError::Spawn {
                    nft: name.clone(),
                    source,
                })?;
            drop(pipe);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| ForwardingError::Spawn {
                nft: name.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ForwardingError::Refused {
                nft: name,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Makes the kernel hold `rs`; returns whether anything had to be loaded.
    pub async fn apply(&mut self, rs: &Ruleset) -> Result<bool, ForwardingError> {
        let text = nft::render(rs, self.mark);
        if self.loaded.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        self.loaded = None;
        self.run(&["-f", "-"], Some(&text)).await?;
        self.loaded = Some(text);
        Ok(true)
    }

    /// Removes the table (nothing happens when it is absent).
    pub async fn remove(&mut self) -> Result<(), ForwardingError> {
        self.loaded = None;
        self.run(&["-f", "-"], Some(&nft::removal()))
            .await
            .map(|_| ())
    }

    /// The table's counters now.
    pub async fn counters(&self) -> Result<Counters, ForwardingError> {
        let json = self
            .run(
                &["-j", "list", "counters", "table", "inet", "ferrolb"],
                None,
            )
            .await?;
        Counters::parse(&json).map_err(ForwardingError::Counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name_and_family() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"counter": {"family": "inet", "name": "forwarded4", "table": "ferrolb", "handle": 1, "packets": 12, "bytes": 900}},
          {"counter": {"family": "inet", "name": "dropped4", "table": "ferrolb", "handle": 2, "packets": 3, "bytes": 180}},
          {"counter": {"family": "inet", "name": "connections4", "table": "ferrolb", "handle": 3, "packets": 2, "bytes": 120}},
          {"counter": {"family": "inet", "name": "forwarded6", "table": "ferrolb", "handle": 4, "packets": 7, "bytes": 600}},
          {"counter": {"family": "inet", "name": "other", "table": "ferrolb", "handle": 5, "packets": 99, "bytes": 1}}]}"#;
        assert_eq!(
            Counters::parse(json).unwrap(),
            Counters {
                forwarded: [12, 7],
                dropped: [3, 0],
                connections: [2, 0]
            }
        );
        assert!(Counters::parse("{}").is_err());
        assert!(Counters::parse("not json").is_err());
    }
}
