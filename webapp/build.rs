//! Builds the web client (`web-client/dist`) with npm when it is missing, so that `cargo run` works on a
//! fresh clone; the assets are then embedded by rust-embed. Also makes cargo rebuild when a migration is added.

use std::path::Path;
use std::process::Command;

fn main() {
    // `sqlx::migrate!` embeds the migrations, but on stable Rust it cannot tell cargo to watch them.
    // Read at run time, not compiled in: the compiled build script is shared by every checkout that uses
    // the same target directory (a CI clone with a warm target dir), and must look at its own checkout.
    let manifest_dir =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let migrations = manifest_dir.join("../migrations");
    println!("cargo:rerun-if-changed={}", migrations.display());
    let root = manifest_dir.join("../web-client");
    println!("cargo:rerun-if-changed={}", root.join("src").display());
    println!("cargo:rerun-if-changed={}", root.join("package.json").display());
    println!("cargo:rerun-if-changed={}", root.join("build.mjs").display());
    println!("cargo:rerun-if-changed={}", root.join("dist/index.html").display());
    let dist_index = root.join("dist/index.html");
    let stale = match (dist_index.metadata().and_then(|m| m.modified()), newest_source(&root)) {
        (Ok(built), Some(src)) => src > built,
        (Ok(_), None) => false,
        (Err(_), _) => true,
    };
    if !stale {
        return;
    }
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
    if !root.join("node_modules").exists() {
        run(
            Command::new(&npm)
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&root),
            "npm ci",
        );
    }
    run(
        Command::new(&npm).args(["run", "build"]).current_dir(&root),
        "npm run build",
    );
}

fn newest_source(root: &Path) -> Option<std::time::SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, newest);
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                *newest = Some(newest.map_or(m, |n: std::time::SystemTime| n.max(m)));
            }
        }
    }
    let mut newest = None;
    walk(&root.join("src"), &mut newest);
    newest
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{what} failed ({s}) in web-client/: install node and npm, then retry"),
        Err(e) => panic!("{what} could not start ({e}): install node and npm (Debian: nodejs npm), then retry"),
    }
}
