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
    let cache = std::env::var_os("FERROLB_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("ferrolb")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferrolb")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache/ferrolb"));
    cache.join(format!("kube-{}", kube_version())).join("bin")
}

/// Path of one binary, or an error that says how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = bin_dir();
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
