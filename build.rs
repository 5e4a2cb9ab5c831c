//! Embeds the git revision (`ORIGIN_PULL_GIT_REVISION`) so the filter and the CLI can say which
//! build they are. Order: the environment variable itself (release pipelines, tarballs), then
//! `git rev-parse`, then `unknown` — a build from a source tarball without git still works.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=ORIGIN_PULL_GIT_REVISION");
    let revision = std::env::var("ORIGIN_PULL_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let rev = git(&["rev-parse", "--short=12", "HEAD"])?;
            // Rebuild when HEAD moves (also in worktrees, where .git is a file). A missing file
            // (packed ref) would make cargo rerun every time, so only existing ones are named.
            let mut watch = vec!["HEAD".to_string()];
            watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
            for name in watch {
                if let Some(p) = git(&["rev-parse", "--git-path", &name]) {
                    if std::path::Path::new(&p).exists() {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            Some(rev)
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ORIGIN_PULL_GIT_REVISION={revision}");
}
