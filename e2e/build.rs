// The git commit for `--version` (shared by the workspace's binary crates).
include!("../build/git_commit.rs");
