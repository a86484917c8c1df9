//! Builds the policy plugins (the `plugins/` workspace, target `wasm32-wasip2`) and embeds the
//! built-ins in `gantry`, so a plain `cargo build` of the workspace produces a complete
//! binary. The example and test plugins are built too; `GANTRY_PLUGIN_DIR` tells tests where.
//! The nested build uses its own target directory under the outer one, shared by every
//! profile, so it runs once and is then incremental.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.join("..");
    let plugins = workspace.join("plugins");
    for watched in [
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugins/sdk",
        "plugins/builtin",
        "plugins/examples",
        "plugins/testing",
        "plugins-wit",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    // plugins/builtin/KIND/NAME is the crate users name `builtin:NAME` where a KIND policy
    // goes (balancer, affinity, health).
    let mut builtins: Vec<(String, String)> = Vec::new();
    for kind in folders(&plugins.join("builtin")) {
        for name in folders(&plugins.join("builtin").join(&kind)) {
            builtins.push((kind.clone(), name));
        }
    }
    builtins.sort();

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let target_dir = shared_target_dir(&out_dir).join("plugins");
    let mut cargo = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&plugins)
        .args([
            "build",
            "--release",
            "--locked",
            "--workspace",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the outer build (flags, wrappers, the host target) must not leak in.
    for (key, _) in env::vars() {
        let outer_only = key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
            || key == "RUSTC_WORKSPACE_WRAPPER"
            || (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE");
        if outer_only {
            cargo.env_remove(&key);
        }
    }
    let status = cargo
        .status()
        .expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the built-in plugins failed (see above). They need the wasm32-wasip2 \
             target: `rustup target add wasm32-wasip2` (or run `bash .ci/setup`)."
        );
    }

    let built = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=GANTRY_PLUGIN_DIR={}", built.display());
    // The Python and JavaScript plugins are built apart (plugins/python/build.sh and
    // plugins/js/build.sh, run by .ci/setup): their tool chains come from PyPI and npm, which
    // a cargo build must not need.
    for (variable, folder) in [
        ("GANTRY_PYTHON_PLUGIN_DIR", "plugins-python"),
        ("GANTRY_JS_PLUGIN_DIR", "plugins-js"),
    ] {
        println!(
            "cargo:rustc-env={variable}={}",
            shared_target_dir(&out_dir).join(folder).display()
        );
    }
    let mut table = String::from("/// Built-in policies: (kind, name, component bytes).\npub(crate) const BUILTINS: &[(&str, &str, &[u8])] = &[\n");
    for (kind, name) in &builtins {
        let file = built.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(file.exists(), "missing {}", file.display());
        let _ = writeln!(
            table,
            "    ({kind:?}, {name:?}, include_bytes!({:?})),",
            file.display().to_string()
        );
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("builtin_plugins.rs"), table).expect("write builtin table");
}

/// The names of the folders in `dir`.
fn folders(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            entry.file_type().ok()?.is_dir().then_some(())?;
            Some(entry.file_name().to_str()?.to_owned())
        })
        .collect()
}

/// `<target>/` of the outer build, found from `OUT_DIR` (`<target>/<profile>/build/<pkg>/out`),
/// so every profile shares one plugin build.
fn shared_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.join("plugins-target"))
}
