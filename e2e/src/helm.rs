//! Helm as the tests (and the kind provider) use it: the pinned binary that
//! `e2e/scripts/build-helm.sh` builds (or `$HELM`), and ferrolb's chart rendered or installed
//! with it. This module runs `helm` and parses what it prints; it keeps no state.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

const VERSIONS_ENV: &str = include_str!("../versions.env");

/// The pinned Helm version, e.g. `v4.3.1`.
pub fn helm_version() -> &'static str {
    VERSIONS_ENV
        .lines()
        .filter_map(|l| l.trim().strip_prefix("HELM_VERSION="))
        .next()
        .unwrap_or("unknown")
}

/// The `helm` binary: `$HELM` if set, else where build-helm.sh puts it.
pub fn binary() -> Result<PathBuf> {
    let path = match std::env::var_os("HELM") {
        Some(p) => PathBuf::from(p),
        None => crate::bins::cache_root()
            .join(format!("helm-{}", helm_version()))
            .join("helm"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingHelm {
            path: path.display().to_string(),
        })
    }
}

/// The chart's directory in this checkout.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/charts/ferrolb")
}

/// Runs `helm ARGS` and returns its stdout, or an error carrying its stderr.
pub fn helm(args: &[&str]) -> Result<String> {
    crate::lab::netns::run(&binary()?.display().to_string(), args)
}

/// `helm template RELEASE <chart> --namespace NAMESPACE --set S...`: the manifests the chart
/// would install, as YAML documents.
pub fn template(release: &str, namespace: &str, sets: &[&str]) -> Result<String> {
    let chart = chart_dir().display().to_string();
    let mut args = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

/// The objects of a multi-document YAML stream (empty documents skipped).
pub fn documents(text: &str) -> Result<Vec<serde_yaml::Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| Error::Parse {
            path: "helm output".into(),
            message: e.to_string(),
        })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_pinned_in_versions_env() {
        let v = helm_version();
        assert!(v.starts_with("v4.") || v.starts_with("v3."), "{v}");
        assert_eq!(v.split('.').count(), 3, "{v}");
    }

    #[test]
    fn a_missing_helm_says_how_to_build_it() {
        let msg = Error::MissingHelm {
            path: "/nowhere/helm".into(),
        }
        .to_string();
        assert!(msg.contains("/nowhere/helm"), "{msg}");
        assert!(msg.contains("e2e/scripts/build-helm.sh"), "{msg}");
    }

    #[test]
    fn documents_skips_empty_ones() {
        let docs = documents("---\n# only a comment\n---\na: 1\n---\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
    }
}
