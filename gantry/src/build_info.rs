//! What this binary was built from (recorded by `build.rs`): shown by `gantry --version`, in
//! `/config` (`build`) and as the `gantry_build_info` metric, so a bug report can name the build.

use serde::Serialize;

/// The build's identity.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BuildInfo {
    /// The package version.
    pub version: &'static str,
    /// The commit it was built from (`unknown` outside a checkout).
    pub commit: &'static str,
    /// Whether the tree had changes not committed: `true`, `false` or `unknown`.
    pub dirty: &'static str,
    /// The cargo profile: `dist`, `release`, `dev`...
    pub profile: &'static str,
}

/// This binary's build.
pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("GANTRY_BUILD_COMMIT"),
    dirty: env!("GANTRY_BUILD_DIRTY"),
    profile: env!("GANTRY_BUILD_PROFILE"),
};

/// `gantry --version`'s text: `0.1.0 (commit 0123abcd..., clean, profile dist)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("GANTRY_BUILD_COMMIT"),
    ", dirty ",
    env!("GANTRY_BUILD_DIRTY"),
    ", profile ",
    env!("GANTRY_BUILD_PROFILE"),
    ")"
);

/// Registers `gantry_build_info{version,commit,dirty,profile} 1` with `registry`.
pub fn register(registry: &prometheus::Registry) {
    let opts = prometheus::Opts::new(
        "gantry_build_info",
        "1, labelled with the build: version, commit, dirty (changes not committed), profile.",
    );
    let labels = ["version", "commit", "dirty", "profile"];
    let info = prometheus::IntGaugeVec::new(opts, &labels).expect("static metric definition");
    info.with_label_values(&[BUILD.version, BUILD.commit, BUILD.dirty, BUILD.profile])
        .set(1);
    // A registry holds one; a second Gantry in the same process (tests) has its own registry.
    let _ = registry.register(Box::new(info));
}
