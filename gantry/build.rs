//! Records what a `gantry` binary was built from, for `gantry --version`, `/config` and the
//! `gantry_build_info` metric: the commit, whether the tree had changes not committed, and the
//! cargo profile. Outside a git checkout (a source tarball, a packaging build) they come from
//! `GANTRY_BUILD_COMMIT` and `GANTRY_BUILD_DIRTY`, else read `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Rerun when the checkout moves (HEAD, the index) or any crate's sources change, so the
    // dirty flag follows edits.
    for watched in [".git/HEAD", ".git/index", ".git/refs"] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }
    for crate_dir in [
        "gantry",
        "lb-core",
        "lb-plugins",
        "lb-policy",
        "lb-k8s",
        "config",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            repo.join(crate_dir).join("src").display()
        );
    }
    println!("cargo:rerun-if-env-changed=GANTRY_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=GANTRY_BUILD_DIRTY");

    let git = |args: &[&str]| {
        // No optional locks: `git status` would otherwise refresh the index file it reads,
        // and a changed index reruns this script and rebuilds the crate at every build.
        Command::new("git")
            .arg("--no-optional-locks")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = std::env::var("GANTRY_BUILD_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::env::var("GANTRY_BUILD_DIRTY")
        .ok()
        .or_else(|| {
            git(&["status", "--porcelain", "--untracked-files=no"])
                .map(|changes| (!changes.is_empty()).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    // The profile's name (`dist`, `release`, `dev`...): cargo's PROFILE says only release or
    // debug, the output directory names the profile itself (target/[TRIPLE/]NAME/build/...).
    let out_dir = std::env::var("OUT_DIR").unwrap_or_default();
    let profile = Path::new(&out_dir)
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .map(|name| {
            if name == "debug" {
                "dev".to_owned()
            } else {
                name
            }
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GANTRY_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=GANTRY_BUILD_DIRTY={dirty}");
    println!("cargo:rustc-env=GANTRY_BUILD_PROFILE={profile}");
}
