//! What the speaker reports on a Service (pure): the `ferrolb.io/Announced` condition, which
//! single speaker writes it, and whether the write is an owner change (`Announcing` event).
//!
//! Every speaker runs the same election, so every speaker computes the same condition; one
//! of them writes it, so that the condition does not flap between writers:
//! - the owner of the Service's first IP (in address order), when that IP is announced;
//! - otherwise the live member with the highest rendezvous score for that IP, so that a
//!   "not announced" condition is still written, and by one speaker.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_crds::conditions::status_str;
use ferrolb_crds::names::{AnnouncementReason, CONDITION_ANNOUNCED};
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::election::{Decision, Election, Protocol, Service, ServicePort, rendezvous_winner};

/// The `ferrolb.io/Announced` condition a Service should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    pub status: bool,
    /// `Announced` when True; an [`AnnouncementReason`](ferrolb_crds::names::AnnouncementReason)
    /// when False.
    pub reason: String,
    pub message: String,
}

/// Reason of a True `ferrolb.io/Announced`.
pub const REASON_ANNOUNCED: &str = "Announced";

/// The condition for `svc` under `election`: True when every IP of the Service is announced
/// (the message names node and interface per IP), False otherwise with the reason of the
/// first IP that is not.
///
/// `sctp_refused_by` is this speaker's node when its kernel refused the SCTP forwarding
/// rules (a speaker knows only its own kernel, so only the IPs it owns are marked). Such an
/// IP of a forwarding pool still carries the Service's TCP and UDP ports, and the message
/// names the SCTP ports it does not carry; when every port of the Service is SCTP, nothing
/// is carried and the condition is False (`NoEligibleNode`: no node that can forward it).
pub fn announced(svc: &Service, election: &Election, sctp_refused_by: Option<&str>) -> Announced {
    let mut ips = svc.ips.clone();
    ips.sort();
    ips.dedup();
    let forwarded: Vec<&ServicePort> = svc.ports.iter().filter(|p| p.node_port.is_some()).collect();
    let sctp: Vec<String> = forwarded
        .iter()
        .filter(|p| p.protocol == Protocol::Sctp)
        .map(|p| format!("{}/SCTP", p.port))
        .collect();
    let only_sctp = !sctp.is_empty() && sctp.len() == forwarded.len();
    let mut parts = Vec::new();
    let mut first_problem = None;
    for ip in &ips {
        match election.decision(*ip) {
            Some(Decision::Owner { node, interface }) => {
                let refused = !sctp.is_empty()
                    && svc.proxied.contains(ip)
                    && sctp_refused_by == Some(node.as_str());
                if !refused {
                    parts.push(format!("{ip} from node {node} on {interface}"));
                } else if only_sctp {
                    first_problem.get_or_insert(AnnouncementReason::NoEligibleNode.as_str());
                    parts.push(format!(
                        "{ip} not announced: node {node} holds it, but its kernel refuses SCTP forwarding rules and every port of the Service is SCTP ({}), so nothing is forwarded",
                        sctp.join(", ")
                    ));
                } else {
                    parts.push(format!(
                        "{ip} from node {node} on {interface} (SCTP ports {} not forwarded: that node's kernel refuses SCTP forwarding rules)",
                        sctp.join(", ")
                    ));
                }
            }
            Some(Decision::NotAnnounced { reason, message }) => {
                first_problem.get_or_insert(reason.as_str());
                parts.push(format!("{ip} not announced: {message}"));
            }
            None => {
                first_problem.get_or_insert(AnnouncementReason::NoEligibleNode.as_str());
                parts.push(format!("{ip} not announced: not elected yet"));
            }
        }
    }
    match first_problem {
        None => Announced {
            status: true,
            reason: REASON_ANNOUNCED.into(),
            message: format!("announced: {}", parts.join("; ")),
        },
        Some(reason) => Announced {
            status: false,
            reason: reason.into(),
            message: parts.join("; "),
        },
    }
}

/// The speaker that writes `svc`'s condition, given the live members.
pub fn writer<'a>(
    svc: &Service,
    election: &'a Election,
    members: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let first: IpAddr = *svc.ips.iter().min()?;
    match election.decision(first) {
        Some(Decision::Owner { node, .. }) => Some(node.as_str()),
        _ => rendezvous_winner(first, members),
    }
}

/// The Service's current `ferrolb.io/Announced` condition.
pub fn current(svc: &K8sService) -> Option<&Condition> {
    ferrolb_crds::service::condition(svc, CONDITION_ANNOUNCED)
}

/// Does the Service already say `want`?
pub fn up_to_date(current: Option<&Condition>, want: &Announced) -> bool {
    current.is_some_and(|c| {
        c.status == status_str(want.status) && c.reason == want.reason && c.message == want.message
    })
}

/// Is writing `want` over `current` an owner change, worth an `Announcing` event? Yes when
/// the Service becomes announced, or when an announced Service's owners or interfaces
/// change; not when it stays the same (a restarted speaker re-writes nothing) and not when
/// it stops being announced (the condition says why).
pub fn owner_changed(current: Option<&Condition>, want: &Announced) -> bool {
    if !want.status {
        return false;
    }
    match current {
        Some(c) if c.status == "True" => c.message != want.message,
        _ => true,
    }
}

/// How often a condition may be rewritten when only its message changes and the change
/// is not one users act on (see [`pace`]).
pub const MESSAGE_ONLY_EVERY: Duration = Duration::from_secs(30);

/// Does writing `want` over `current` change what users act on? Yes for a new condition, a
/// new status or reason, and any change of an announced Service's message (who announces
/// each IP, on which interface, what is not forwarded, whether the speakers' views differ).
/// No when a Service stays unannounced for the same reason and only the message moved
/// (say, the list of nodes it names as excluded).
pub fn substantive(current: Option<&Condition>, want: &Announced) -> bool {
    current.is_none_or(|c| {
        c.status != status_str(want.status)
            || c.reason != want.reason
            || (want.status && c.message != want.message)
    })
}

/// When `want` may be written over `current`, given when this speaker last wrote the
/// Service's condition: a substantive change at once; a message-only change at most once
/// per [`MESSAGE_ONLY_EVERY`].
pub fn pace(
    current: Option<&Condition>,
    want: &Announced,
    last_write: Option<Instant>,
    now: Instant,
) -> Option<Duration> {
    if substantive(current, want) {
        return None;
    }
    let next = last_write? + MESSAGE_ONLY_EVERY;
    (next > now).then(|| next - now)
}

/// A bound on the speaker's condition writes: `rate` per second on average, `burst` at
/// once (a node failure that moves many IPs writes the first `burst` at once, the rest at
/// `rate`).
#[derive(Clone, Debug)]
pub struct WriteBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl WriteBudget {
    pub fn new(rate: f64, burst: f64, now: Instant) -> WriteBudget {
        WriteBudget {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one write at `now`; `Some(wait)` when none is left, to be asked again after.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Decision;
    use ferrolb_crds::names::AnnouncementReason;
    use std::collections::BTreeMap;

    fn svc(ips: &[&str]) -> Service {
        Service {
            namespace: "shop".into(),
            name: "web".into(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    fn owner(node: &str) -> Decision {
        Decision::Owner {
            node: node.into(),
            interface: "eth0".into(),
        }
    }

    fn election(d: &[(&str, Decision)]) -> Election {
        Election {
            decisions: d
                .iter()
                .map(|(ip, d)| (ip.parse().unwrap(), d.clone()))
                .collect::<BTreeMap<_, _>>(),
            problems: vec![],
        }
    }

    fn cond(status: &str, message: &str) -> Condition {
        Condition {
            type_: CONDITION_ANNOUNCED.into(),
            status: status.into(),
            reason: "x".into(),
            message: message.into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }
    }

    fn announced_as(status: bool, reason: &str, message: &str) -> Announced {
        Announced {
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn only_a_change_users_act_on_is_written_at_once() {
        let mut not = cond("False", "10.0.0.5 not announced: NotReady: n1, n2");
        not.reason = "NoEligibleNode".into();
        let moved = announced_as(
            false,
            "NoEligibleNode",
            "10.0.0.5 not announced: NotReady: n1, n3",
        );
        assert!(!substantive(Some(&not), &moved), "only the node list moved");
        let t0 = Instant::now();
        assert_eq!(
            pace(Some(&not), &moved, None, t0),
            None,
            "never written by us"
        );
        assert_eq!(
            pace(Some(&not), &moved, Some(t0), t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            pace(Some(&not), &moved, Some(t0), t0 + MESSAGE_ONLY_EVERY),
            None
        );
        // Another reason, announced, a new condition, an owner change: at once.
        let other = announced_as(false, "NoLocalEndpoints", "10.0.0.5 not announced: no pod");
        let up = announced_as(
            true,
            "Announced",
            "announced: 10.0.0.5 from node n1 on eth0",
        );
        for want in [&other, &up] {
            assert_eq!(pace(Some(&not), want, Some(t0), t0), None, "{want:?}");
        }
        assert_eq!(pace(None, &moved, Some(t0), t0), None);
        let mut on_n1 = cond("True", "announced: 10.0.0.5 from node n1 on eth0");
        on_n1.reason = "Announced".into();
        let on_n2 = announced_as(
            true,
            "Announced",
            "announced: 10.0.0.5 from node n2 on eth0",
        );
        assert!(substantive(Some(&on_n1), &on_n2));
        assert!(!substantive(Some(&on_n1), &up), "the same");
    }

    #[test]
    fn the_write_budget_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = WriteBudget::new(10.0, 3.0, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), None);
        }
        let wait = b.take(t0).expect("the burst is spent");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(b.take(t0 + Duration::from_millis(100)), None);
        assert!(b.take(t0 + Duration::from_millis(100)).is_some());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(later), None);
        }
        assert!(b.take(later).is_some());
    }

    #[test]
    fn true_names_node_and_interface_for_every_ip() {
        let s = svc(&["fd00::5", "10.0.0.5"]);
        let e = election(&[("10.0.0.5", owner("n1")), ("fd00::5", owner("n2"))]);
        let a = announced(&s, &e, None);
        assert!(a.status);
        assert_eq!(a.reason, "Announced");
        assert_eq!(
            a.message,
            "announced: 10.0.0.5 from node n1 on eth0; fd00::5 from node n2 on eth0"
        );
        // The first IP's owner writes.
        assert_eq!(writer(&s, &e, ["n1", "n2", "n3"]), Some("n1"));
    }

    #[test]
    fn false_carries_the_reason_and_a_member_still_writes() {
        let s = svc(&["10.0.0.5"]);
        let e = election(&[(
            "10.0.0.5",
            Decision::NotAnnounced {
                reason: AnnouncementReason::NoLocalEndpoints,
                message: "no node has a ready local endpoint".into(),
            },
        )]);
        let a = announced(&s, &e, None);
        assert!(!a.status);
        assert_eq!(a.reason, "NoLocalEndpoints");
        assert!(a.message.contains("no node has a ready local endpoint"));
        let w = writer(&s, &e, ["n1", "n2", "n3"]).unwrap();
        assert_eq!(
            Some(w),
            rendezvous_winner("10.0.0.5".parse().unwrap(), ["n3", "n2", "n1"]),
            "the same writer whatever the order members are listed in"
        );
        assert_eq!(writer(&s, &e, []), None);
    }

    #[test]
    fn events_only_when_the_owner_changes() {
        let s = svc(&["10.0.0.5"]);
        let a1 = announced(&s, &election(&[("10.0.0.5", owner("n1"))]), None);
        let a2 = announced(&s, &election(&[("10.0.0.5", owner("n2"))]), None);
        assert!(owner_changed(None, &a1));
        assert!(owner_changed(Some(&cond("False", "whatever")), &a1));
        assert!(!owner_changed(Some(&cond("True", &a1.message)), &a1));
        assert!(owner_changed(Some(&cond("True", &a1.message)), &a2));
        let gone = Announced {
            status: false,
            reason: "NoEligibleNode".into(),
            message: "x".into(),
        };
        assert!(!owner_changed(Some(&cond("True", &a1.message)), &gone));
    }

    #[test]
    fn up_to_date_compares_status_reason_and_message() {
        let want = Announced {
            status: true,
            reason: "Announced".into(),
            message: "m".into(),
        };
        let mut c = cond("True", "m");
        assert!(!up_to_date(Some(&c), &want));
        c.reason = "Announced".into();
        assert!(up_to_date(Some(&c), &want));
        assert!(!up_to_date(None, &want));
        c.message = "other".into();
        assert!(!up_to_date(Some(&c), &want));
    }

    #[test]
    fn sctp_ports_a_refusing_kernel_cannot_forward_are_named() {
        let port = |protocol, port, node_port| ServicePort {
            protocol,
            port,
            node_port: Some(node_port),
        };
        let mut s = svc(&["10.0.0.5", "fd00::5"]);
        s.proxied = s.ips.iter().copied().collect();
        s.ports = vec![
            port(Protocol::Tcp, 80, 30080),
            port(Protocol::Sctp, 9, 30009),
        ];
        let e = election(&[("10.0.0.5", owner("n1")), ("fd00::5", owner("n2"))]);
        // A kernel that takes the rules, or another node's: nothing to say.
        assert_eq!(announced(&s, &e, None), announced(&s, &e, Some("n3")));
        assert!(!announced(&s, &e, None).message.contains("SCTP"));
        // n1 refuses: its IP still carries port 80 and the message names the SCTP port.
        let a = announced(&s, &e, Some("n1"));
        assert!(a.status, "{a:?}");
        assert_eq!(
            a.message,
            "announced: 10.0.0.5 from node n1 on eth0 (SCTP ports 9/SCTP not forwarded: that node's kernel refuses SCTP forwarding rules); fd00::5 from node n2 on eth0"
        );
        // Only SCTP ports: nothing is carried, the condition is False.
        s.ports = vec![
            port(Protocol::Sctp, 9, 30009),
            port(Protocol::Sctp, 10, 30010),
        ];
        let a = announced(&s, &e, Some("n2"));
        assert!(!a.status);
        assert_eq!(a.reason, "NoEligibleNode");
        assert!(
            a.message.contains("fd00::5 not announced: node n2 holds it, but its kernel refuses SCTP forwarding rules and every port of the Service is SCTP (9/SCTP, 10/SCTP)"),
            "{}",
            a.message
        );
        // VIP mode (kube-proxy handles the IP): the speaker's kernel rules play no part.
        s.proxied.clear();
        assert!(announced(&s, &e, Some("n2")).status);
        // A port without a NodePort is not forwarded anyway and is not named.
        s.proxied = s.ips.iter().copied().collect();
        s.ports = vec![
            port(Protocol::Tcp, 80, 30080),
            ServicePort {
                protocol: Protocol::Sctp,
                port: 9,
                node_port: None,
            },
        ];
        assert!(!announced(&s, &e, Some("n1")).message.contains("SCTP"));
    }
}
