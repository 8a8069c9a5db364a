// The build script of each binary crate (controller, speaker, e2e), included by their
// `build.rs`: it gives the crate `FERROLB_BUILD_COMMIT`, the git commit the binary is built
// from, for `--version`, the startup log line and `ferrolb_build_info`.
//
// The value is the commit's first 12 hex digits, with `-dirty` when tracked files differ
// from it; without a git checkout (a tarball, a container build without `.git`) it is
// `$FERROLB_GIT_COMMIT`, else `unknown`.
//
// Kept cheap: it reruns only when HEAD, the ref HEAD points to, or the index changes, not
// on every edit. So `-dirty` reflects the tree as of the last commit, checkout or `git add`;
// an edit to a tracked file that is never staged does not add it.

use std::path::{Path, PathBuf};
use std::process::Command;

include!("checkout.rs");

const FALLBACK_ENV: &str = "FERROLB_GIT_COMMIT";

fn main() {
    // Also the git paths watched below are this checkout's.
    track_checkout();
    println!("cargo::rerun-if-env-changed={FALLBACK_ENV}");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = from_git(&manifest_dir)
        .or_else(|| {
            std::env::var(FALLBACK_ENV)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo::rustc-env=FERROLB_BUILD_COMMIT={commit}");
}

/// `git` in `dir` with optional locks off, so that asking never rewrites the index (which
/// would make this script rerun next time); `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn from_git(dir: &Path) -> Option<String> {
    // A tarball unpacked inside some other repository must not take that one's commit:
    // the crate's own manifest has to be tracked.
    git(dir, &["ls-files", "--error-unmatch", "Cargo.toml"])?;
    let git_dir = PathBuf::from(git(dir, &["rev-parse", "--absolute-git-dir"])?);
    // Canonical, so the paths cargo records compare equal from one run to the next (a
    // `crate/../.git` path did not: cargo stored it shortened and saw a change every time).
    let common_dir = git(dir, &["rev-parse", "--git-common-dir"])
        .and_then(|d| dir.join(d).canonicalize().ok())
        .unwrap_or_else(|| git_dir.clone());
    watch(&git_dir.join("HEAD"));
    watch(&git_dir.join("index"));
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        // The branch moves by its loose ref, or by packed-refs when it has none; a loose
        // ref that does not exist yet is watched through the nearest directory that does.
        let refs = common_dir.join("refs");
        let mut loose = common_dir.join(&reference);
        while !loose.exists() && loose != refs && loose.pop() {}
        if loose.starts_with(&refs) {
            watch(&loose);
        }
        watch(&common_dir.join("packed-refs"));
        watch(&common_dir.join("reftable"));
    }
    let hash = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    let status = git(dir, &["status", "--porcelain", "--untracked-files=no"])?;
    Some(if status.is_empty() {
        hash
    } else {
        format!("{hash}-dirty")
    })
}

/// Watches a path that exists (cargo reruns every time for one that does not).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}
