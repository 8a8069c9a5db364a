//! Two throw-away network namespaces joined by a veth pair (`a0` in the first, `b0` in the
//! second), for the responder tests. Needs root. Removed on drop, also when a test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use ferrolb_speaker::wire::ethernet::Mac;

/// Runs a command; its success and its stdout + stderr.
pub fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The pair of namespaces `a` and `b`, with `addr_a` on `a0` and `addr_b` on `b0`
/// (CIDR notation; IPv6 without duplicate address detection).
pub struct Pair {
    pub a: &'static str,
    pub b: &'static str,
}

impl Pair {
    pub fn up(a: &'static str, b: &'static str, addr_a: &str, addr_b: &str, peer: &str) -> Pair {
        for ns in [a, b] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let pair = Pair { a, b };
        for cmd in [
            vec!["ip", "netns", "add", a],
            vec!["ip", "netns", "add", b],
            vec![
                "ip", "-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns",
                b,
            ],
            // No duplicate address detection: IPv6 addresses are usable at once.
            vec![
                "ip",
                "netns",
                "exec",
                a,
                "sysctl",
                "-qw",
                "net.ipv6.conf.a0.accept_dad=0",
            ],
            vec![
                "ip",
                "netns",
                "exec",
                b,
                "sysctl",
                "-qw",
                "net.ipv6.conf.b0.accept_dad=0",
            ],
            vec!["ip", "-n", a, "addr", "add", addr_a, "dev", "a0", "nodad"],
            vec!["ip", "-n", b, "addr", "add", addr_b, "dev", "b0", "nodad"],
            vec!["ip", "-n", a, "link", "set", "a0", "up"],
            vec!["ip", "-n", b, "link", "set", "b0", "up"],
        ] {
            let (ok, out) = sh(&cmd);
            assert!(ok, "{cmd:?}: {out}");
        }
        // Wait until `b` can route to `peer` over a link with carrier.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sh(&["ip", "-n", b, "route", "get", peer]).0
            || sh(&["ip", "-n", b, "link", "show", "b0"])
                .1
                .contains("NO-CARRIER")
        {
            assert!(Instant::now() < deadline, "b0 never came up");
            std::thread::sleep(Duration::from_millis(50));
        }
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [self.a, self.b] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

pub fn mac_of(ns: &str, dev: &str) -> Mac {
    let (_, out) = sh(&["ip", "-n", ns, "-o", "link", "show", dev]);
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap();
    mac.parse().unwrap()
}

/// Runs `f` in a thread that has entered namespace `ns`: a socket created there stays in
/// that namespace, whichever thread uses it later.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}
