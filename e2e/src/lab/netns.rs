//! Thin wrappers over `ip` (iproute2) and friends for the lab's network namespaces. Every
//! call names the namespace it acts in; nothing here touches the host's own interfaces or
//! routes except the one link the lab creates (`flb-host`).

use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            name: program.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip ARGS` in the current (host) namespace.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// `ip -n NS ARGS`: an `ip` command acting inside namespace `ns`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["-n", ns];
    v.extend_from_slice(args);
    run("ip", &v)
}

/// Runs `program args` inside namespace `ns` (`ip netns exec`).
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["netns", "exec", ns, program];
    v.extend_from_slice(args);
    run("ip", &v)
}

/// A `Command` that runs `program` inside `ns`; `ip netns exec` execs in place, so the
/// child's PID is the program's own.
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

pub fn add_ns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a namespace; a missing one is not an error.
pub fn del_ns(ns: &str) -> Result<()> {
    if list_ns()?.iter().any(|n| n == ns) {
        ip(&["netns", "del", ns])?;
    }
    Ok(())
}

/// Names of every named network namespace.
pub fn list_ns() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Sets a sysctl inside `ns` (`/proc/sys` is per network namespace for `net.*`).
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    exec_in(ns, "sysctl", &["-q", "-w", &format!("{key}={value}")])?;
    Ok(())
}

/// Creates a veth pair with `a` in namespace `ns_a` and `b` in `ns_b` (`None`: the host).
pub fn veth(a: &str, ns_a: Option<&str>, b: &str, ns_b: Option<&str>) -> Result<()> {
    let mut args = vec!["link", "add", a];
    if let Some(n) = ns_a {
        args.extend(["netns", n]);
    }
    args.extend(["type", "veth", "peer", "name", b]);
    if let Some(n) = ns_b {
        args.extend(["netns", n]);
    }
    ip(&args)?;
    Ok(())
}

/// The MAC address of `dev` in `ns`.
pub fn mac_of(ns: &str, dev: &str) -> Result<String> {
    let out = ip_in(ns, &["-o", "link", "show", dev])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| Error::Command {
            command: format!("ip -n {ns} link show {dev}"),
            stderr: "no link/ether address".into(),
        })
}
