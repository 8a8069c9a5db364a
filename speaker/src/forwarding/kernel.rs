//! The I/O shell of forwarding: runs `nft` to load a [`Ruleset`] (only when its text changed
//! since the last load), to remove the table, and to read the table's counters. It owns the
//! table `inet ferrolb` and nothing else: no other table, chain or rule is listed, changed
//! or deleted.

use std::process::Stdio;

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use super::Ruleset;
use super::nft;
use crate::admin::{ForwardingStats, Metrics};
use crate::election::Protocol;

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
    /// What the kernel holds, as far as we know: the node addresses the chains were made
    /// for, and the sets' contents. `None` before the first load and after a failure (the
    /// next load then replaces the table whole).
    loaded: Option<Loaded>,
}

#[derive(Debug, PartialEq)]
struct Loaded {
    shape: nft::Shape,
    contents: String,
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

    /// Makes the kernel hold `rs`; returns whether anything had to be loaded. The first
    /// load (and one after a failure or a change of the chains' [`nft::Shape`]) replaces
    /// the table whole; later ones rewrite only the sets and maps, in one transaction, so the
    /// counters keep counting.
    pub async fn apply(&mut self, rs: &Ruleset) -> Result<bool, ForwardingError> {
        let want = Loaded {
            shape: nft::Shape::of(rs),
            contents: nft::render_contents(rs),
        };
        let script = match &self.loaded {
            Some(have) if *have == want => return Ok(false),
            Some(have) if have.shape == want.shape => want.contents.clone(),
            _ => nft::render(rs, self.mark),
        };
        self.loaded = None;
        self.run(&["-f", "-"], Some(&script)).await?;
        self.loaded = Some(want);
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

impl Counters {
    fn add(&mut self, o: &Counters) {
        for i in 0..2 {
            self.forwarded[i] += o.forwarded[i];
            self.dropped[i] += o.dropped[i];
            self.connections[i] += o.connections[i];
        }
    }

    /// Some count went down: the table was replaced and its counters began again.
    fn went_down_from(&self, before: &Counters) -> bool {
        (0..2).any(|i| {
            self.forwarded[i] < before.forwarded[i]
                || self.dropped[i] < before.dropped[i]
                || self.connections[i] < before.connections[i]
        })
    }
}

/// Counts that only grow although the kernel's start again whenever the table is replaced:
/// what the kernel said before a restart is carried over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    carried: Counters,
    last: Counters,
}

impl Totals {
    /// Takes the kernel's counts now; returns the running totals.
    pub fn observe(&mut self, now: Counters) -> Counters {
        if now.went_down_from(&self.last) {
            self.carried.add(&self.last);
        }
        self.last = now;
        let mut t = self.carried;
        t.add(&now);
        t
    }
}

/// Forwarding as the speaker's loop drives it: the ruleset it holds, loads around each
/// change of the responders ([`Ruleset::during_change_from`]), failures logged once and
/// retried on the next turn, counters carried into the metrics.
#[derive(Debug)]
pub struct Forwarder {
    kernel: Kernel,
    /// What the responders answer for now, as rules.
    current: Ruleset,
    totals: Totals,
    metrics: Arc<Metrics>,
    last_error: Option<String>,
    /// When the SCTP rules were last offered to the kernel.
    sctp_offered: Option<std::time::Instant>,
}

/// How often SCTP rules the kernel refused are offered again.
const SCTP_REOFFER: std::time::Duration = std::time::Duration::from_secs(60);

impl Forwarder {
    pub fn new(kernel: Kernel, metrics: Arc<Metrics>) -> Forwarder {
        metrics.update_forwarding(|s| *s = ForwardingStats::default());
        Forwarder {
            kernel,
            current: Ruleset::default(),
            totals: Totals::default(),
            metrics,
            last_error: None,
            sctp_offered: None,
        }
    }

    fn stats(&self, f: impl FnOnce(&mut ForwardingStats)) {
        self.metrics.update_forwarding(f);
    }

    async fn load(&mut self, rs: &Ruleset) -> bool {
        let has_sctp = rs.forwards.iter().any(|f| f.protocol == Protocol::Sctp);
        if !has_sctp {
            return self.try_load(rs).await;
        }
        // A kernel without SCTP NAT support refuses the SCTP rules: forward the rest, and
        // say so (the metric, and `ferrolb.io/Announced` on the Services concerned). Once
        // refused, the SCTP rules are offered again at most once a minute (a refusal may
        // have been a passing failure of another kind).
        let offer = !self.sctp_refused()
            || self
                .sctp_offered
                .is_none_or(|at| at.elapsed() >= SCTP_REOFFER);
        if offer {
            self.sctp_offered = Some(std::time::Instant::now());
            match self.kernel.apply(rs).await {
                Ok(changed) => {
                    self.loaded(rs, changed);
                    if self.sctp_refused() {
                        info!("this kernel now takes the SCTP forwarding rules");
                        self.stats(|s| s.sctp_refused = false);
                    }
                    return true;
                }
                Err(e) => {
                    debug!(error = %e, "the ruleset with SCTP rules was refused; trying without them");
                }
            }
        }
        let mut without = rs.clone();
        without.forwards.retain(|f| f.protocol != Protocol::Sctp);
        without
            .allowed_sources
            .retain(|(_, p, _), _| *p != Protocol::Sctp);
        if !self.try_load(&without).await {
            return false;
        }
        if !self.sctp_refused() {
            warn!(
                "this kernel refused the SCTP forwarding rules: SCTP ports of forwarded IPs get no traffic (ferrolb_forwarding_sctp_refused, and ferrolb.io/Announced on each such Service, say so); TCP and UDP are forwarded"
            );
            self.stats(|s| s.sctp_refused = true);
        }
        true
    }

    /// Has the kernel refused the SCTP rules?
    pub fn sctp_refused(&self) -> bool {
        self.metrics.forwarding().is_some_and(|s| s.sctp_refused)
    }

    fn loaded(&mut self, rs: &Ruleset, changed: bool) {
        if changed {
            self.stats(|s| s.loads += 1);
            debug!(
                ips = rs.owned.len(),
                forwards = rs.forwards.len(),
                "forwarding rules loaded"
            );
        }
        if self.last_error.take().is_some() {
            info!("forwarding rules loaded again");
        }
    }

    async fn try_load(&mut self, rs: &Ruleset) -> bool {
        match self.kernel.apply(rs).await {
            Ok(changed) => {
                self.loaded(rs, changed);
                true
            }
            Err(e) => {
                self.stats(|s| s.errors += 1);
                let text = e.to_string();
                if self.last_error.as_deref() != Some(text.as_str()) {
                    warn!(error = %text, "cannot load the forwarding rules; retrying");
                    self.last_error = Some(text);
                }
                false
            }
        }
    }

    /// Replaces whatever a previous speaker left with an empty table.
    pub async fn start(&mut self) {
        self.current = Ruleset::default();
        self.load(&Ruleset::default()).await;
    }

    /// Before the responders change to `next`: rules for what they will answer and for
    /// what they still answer.
    pub async fn begin(&mut self, next: &Ruleset) {
        let mid = next.during_change_from(&self.current);
        self.load(&mid).await;
    }

    /// After the responders changed: exactly `next`.
    pub async fn finish(&mut self, next: Ruleset) {
        self.load(&next).await;
        let ips = [
            next.owned.iter().filter(|ip| ip.is_ipv4()).count() as u64,
            next.owned.iter().filter(|ip| ip.is_ipv6()).count() as u64,
        ];
        self.stats(|s| s.ips = ips);
        self.current = next;
    }

    /// Reads the kernel's counters into the metrics.
    pub async fn refresh_counters(&mut self) {
        match self.kernel.counters().await {
            Ok(now) => {
                let totals = self.totals.observe(now);
                self.stats(|s| s.totals = totals);
            }
            Err(e) => debug!(%e, "cannot read the forwarding counters"),
        }
    }

    /// Removes the table (at SIGTERM, after the handover).
    pub async fn stop(&mut self) {
        self.refresh_counters().await;
        if let Err(e) = self.kernel.remove().await {
            warn!(%e, "cannot remove the forwarding rules");
        }
        self.current = Ruleset::default();
        self.stats(|s| s.ips = [0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_carry_counts_over_a_table_replacement() {
        let c = |f: u64| Counters {
            forwarded: [f, 0],
            dropped: [0, 0],
            connections: [f / 2, 0],
        };
        let mut t = Totals::default();
        assert_eq!(t.observe(c(10)).forwarded[0], 10);
        assert_eq!(t.observe(c(14)).forwarded[0], 14);
        // Replaced: the kernel starts again at 0 and counts 3.
        assert_eq!(t.observe(c(3)).forwarded[0], 17);
        assert_eq!(t.observe(c(5)).forwarded[0], 19);
        assert_eq!(t.observe(c(5)).connections[0], 7 + 2);
    }

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
