//! Records the git commit the binary is built from, for
//! `switchboard --version`: `SWITCHBOARD_GIT_COMMIT` as set in the build's
//! environment (a packager without a git checkout sets it), else
//! `git rev-parse --short HEAD`, else nothing (a source tarball, no git).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = std::env::var("SWITCHBOARD_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_default();
    println!("cargo:rustc-env=SWITCHBOARD_GIT_COMMIT={commit}");
    // Build again when HEAD moves: HEAD itself (a checkout), the branch it
    // names (a commit), and packed refs. In a worktree HEAD is in its own
    // git dir and the branches in the common one. Only files that exist:
    // cargo reruns a script whose watched file is missing on every build.
    let dir = |which: &str| git(&["rev-parse", "--path-format=absolute", which]);
    if let (Some(git_dir), Some(common)) = (dir("--git-dir"), dir("--git-common-dir")) {
        let mut watched = vec![
            Path::new(&git_dir).join("HEAD"),
            Path::new(&common).join("packed-refs"),
        ];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(Path::new(&common).join(branch));
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// One line of git's output, or `None` (no git, not a checkout, an error).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_string())
}
