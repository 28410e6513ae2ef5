//! Fetches the web UI's front-end libraries (pinned in `ui/package.json`
//! and `ui/package-lock.json`) from npm into OUT_DIR, so the master embeds
//! them and serves its UI with nothing else installed. npm's cache makes
//! a rebuild cost nothing; without npm the build says how to get it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Files of installed packages the UI serves, by the name it serves them as.
const VENDORED: &[(&str, &str)] = &[
    (
        "uPlot.iife.min.js",
        "node_modules/uplot/dist/uPlot.iife.min.js",
    ),
    ("uPlot.min.css", "node_modules/uplot/dist/uPlot.min.css"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let ui = manifest.join("ui");
    for file in ["package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed=ui/{file}");
    }
    let npm_dir = out.join("ui-npm");
    let fresh = VENDORED
        .iter()
        .all(|(_, from)| npm_dir.join(from).is_file())
        && same_file(
            &ui.join("package-lock.json"),
            &npm_dir.join("package-lock.json"),
        );
    if !fresh {
        install(&ui, &npm_dir);
    }
    for (name, from) in VENDORED {
        std::fs::copy(npm_dir.join(from), out.join(name))
            .unwrap_or_else(|e| panic!("cannot copy {from} into the build: {e}"));
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
}

/// `npm ci` of the pinned packages in `dir`.
fn install(ui: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("cannot create the npm directory in OUT_DIR");
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(ui.join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("cannot copy ui/{file}: {e}"));
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(dir)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`npm ci` for the web UI's libraries failed ({s}); the build needs the npm registry (or npm's cache)"
        ),
        Err(e) => panic!(
            "cannot run npm ({e}): the master's web UI embeds libraries from npm; install Node.js and npm (Debian: apt install npm)"
        ),
    }
}
