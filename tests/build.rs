//! Builds the shipped components (`../components`) and the test-only components
//! (`test-components/`) for `wasm32-wasip2`, copies them into `$OUT_DIR` (so a later build
//! of another checkout sharing the target directory cannot swap them under the tests), and
//! writes their paths as constants into `$OUT_DIR/components.rs` (included by `src/lib.rs` as
//! `broadcaster_tests::components`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// (workspace dir relative to the repository root, member crates)
const WORKSPACES: &[(&str, &[&str])] = &[
    ("components", &["redis-stream", "router", "webhook"]),
    ("tests/test-components", &["attacker", "batcher", "command", "scripted", "slow-stream", "stream-v0-1"]),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out; the wasm builds get their own
    // target directory next to the host's, so they neither wait on its lock nor rebuild.
    let target_dir = out_dir.ancestors().nth(4).unwrap().join("wasm-components");

    for dir in ["wit", "guest-sdk/src", "guest-sdk/Cargo.toml", "entry/src", "entry/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let mut constants = String::new();
    for (workspace, members) in WORKSPACES {
        let workspace_dir = root.join(workspace);
        println!("cargo:rerun-if-changed={}", workspace_dir.join("Cargo.toml").display());
        for member in *members {
            println!("cargo:rerun-if-changed={}", workspace_dir.join(member).display());
        }
        build(&workspace_dir, &target_dir);
        for member in *members {
            let file = member.replace('-', "_");
            let built = target_dir.join("wasm32-wasip2/release").join(format!("{file}.wasm"));
            assert!(built.exists(), "building {workspace} did not produce {}", built.display());
            let path = out_dir.join(format!("{file}.wasm"));
            std::fs::copy(&built, &path).unwrap_or_else(|err| panic!("copying {}: {err}", built.display()));
            constants.push_str(&format!(
                "/// `{workspace}/{member}` built for wasm32-wasip2.\npub const {}: &str = {:?};\n",
                member.to_uppercase().replace('-', "_"),
                path.display().to_string()
            ));
        }
    }
    std::fs::write(out_dir.join("components.rs"), constants).unwrap();
}

fn build(workspace: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|err| panic!("cannot run cargo to build {}: {err}", workspace.display()));
    assert!(
        status.success(),
        "building the components in {} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)",
        workspace.display()
    );
}
