//! Where the Kubernetes binaries live: built by `e2e/scripts/build-kube.sh` at the version
//! pinned in `e2e/versions.env`, cached under `~/.cache/ferrolb/kube-<version>/bin`.

use std::path::PathBuf;

use crate::{Error, Result};

const VERSIONS_ENV: &str = include_str!("../versions.env");

/// The pinned Kubernetes version, e.g. `v1.36.3`.
pub fn kube_version() -> &'static str {
    VERSIONS_ENV
        .lines()
        .filter_map(|l| l.trim().strip_prefix("KUBE_VERSION="))
        .next()
        .unwrap_or("unknown")
}

/// The directory holding `etcd`, `kube-apiserver` and friends. `FERROLB_KUBE_BIN_DIR`
/// overrides it; otherwise it follows the build script's cache layout.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERROLB_KUBE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    cache_root()
        .join(format!("kube-{}", kube_version()))
        .join("bin")
}

/// The cache the build scripts fill (`$FERROLB_CACHE`, else `~/.cache/ferrolb`), as they
/// compute it.
pub fn cache_root() -> PathBuf {
    std::env::var_os("FERROLB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("ferrolb")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferrolb")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/ferrolb"))
}

/// Path of one binary, or an error that says how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    binary_in(&bin_dir(), name)
}

/// Runs the pinned `kubectl` against `kubeconfig`: its stdout, or an error with its stderr.
pub fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> Result<String> {
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    let mut v = vec![kc.as_str()];
    v.extend_from_slice(args);
    crate::lab::netns::run(&binary("kubectl")?.display().to_string(), &v)
}

fn binary_in(dir: &std::path::Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary {
            name: name.to_string(),
            dir: dir.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let msg = binary_in(dir.path(), "kube-apiserver")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("kube-apiserver not found"), "{msg}");
        assert!(msg.contains("make kube-bins"), "{msg}");
    }

    /// Runs install-deps.sh with a PATH holding only the given tools (as links, or as
    /// stand-ins that succeed) and returns its exit code and stderr.
    fn install_deps_with(real: &[&str], fake: &[&str]) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().unwrap();
        for tool in real {
            let found = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| std::path::Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap();
            symlink(found, dir.path().join(tool)).unwrap();
        }
        for tool in fake {
            symlink("/bin/true", dir.path().join(tool)).unwrap();
        }
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
        let out = Command::new(dir.path().join("bash"))
            .arg(script)
            .env_clear()
            .env("PATH", dir.path())
            .env("HOME", dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn install_deps_names_what_is_missing_in_one_sentence() {
        let base = ["bash", "dirname", "id"];
        let debian = [
            "cc",
            "git",
            "curl",
            "ip",
            "sysctl",
            "iptables",
            "nft",
            "arping",
            "ndisc6",
            "tcpdump",
            "conntrack",
        ];
        let (code, err) = install_deps_with(&base, &debian);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("the Rust toolchain is missing; install it with rustup"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");

        let mut with_rust: Vec<&str> = debian.to_vec();
        with_rust.extend(["cargo", "rustup"]);
        let (code, err) = install_deps_with(&base, &with_rust);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("the Go toolchain is missing"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn version_is_pinned_in_versions_env() {
        let v = kube_version();
        assert!(v.starts_with("v1."), "{v}");
        assert_eq!(v.split('.').count(), 3, "{v}");
    }

    #[test]
    fn bin_dir_is_keyed_by_version() {
        if std::env::var_os("FERROLB_KUBE_BIN_DIR").is_none() {
            assert!(bin_dir().ends_with(format!("kube-{}/bin", kube_version())));
        }
    }
}
