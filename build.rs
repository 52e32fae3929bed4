//! Bundles the dashboard's front-end libraries (Leaflet, topojson-client, the world-atlas
//! country outlines) into the binary, so the map works offline and from one file.
//!
//! They come from the npm registry through `web/package.json` and `web/package-lock.json`,
//! never from the repository: this script uses `web/node_modules` when a developer has run
//! `npm ci` there (or `QUAKESTREAM_NODE_MODULES` when set), and otherwise runs `npm ci` itself
//! in its own output directory. Without npm the build still succeeds; the dashboard then says
//! which files are missing and how to get them.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// (route under /vendor/, path inside node_modules, content type).
const FILES: &[(&str, &str, &str)] = &[
    (
        "leaflet.js",
        "leaflet/dist/leaflet.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "leaflet.css",
        "leaflet/dist/leaflet.css",
        "text/css; charset=utf-8",
    ),
    (
        "images/layers.png",
        "leaflet/dist/images/layers.png",
        "image/png",
    ),
    (
        "images/layers-2x.png",
        "leaflet/dist/images/layers-2x.png",
        "image/png",
    ),
    (
        "images/marker-icon.png",
        "leaflet/dist/images/marker-icon.png",
        "image/png",
    ),
    (
        "topojson-client.js",
        "topojson-client/dist/topojson-client.min.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "countries-50m.json",
        "world-atlas/countries-50m.json",
        "application/json",
    ),
    (
        "LICENSE-leaflet.txt",
        "leaflet/LICENSE",
        "text/plain; charset=utf-8",
    ),
    (
        "LICENSE-world-atlas.txt",
        "world-atlas/LICENSE",
        "text/plain; charset=utf-8",
    ),
    (
        "LICENSE-topojson-client.txt",
        "topojson-client/LICENSE",
        "text/plain; charset=utf-8",
    ),
];

fn main() {
    println!("cargo:rerun-if-changed=web/package.json");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-env-changed=QUAKESTREAM_NODE_MODULES");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));

    let modules = node_modules(&manifest, &out);
    let mut code = String::from(
        "/// Bundled front-end files: (route under /vendor/, content type, bytes).\n\
         pub static VENDOR: &[(&str, &str, &[u8])] = &[\n",
    );
    let mut missing = Vec::new();
    for (route, rel, mime) in FILES {
        match modules
            .as_ref()
            .map(|m| m.join(rel))
            .filter(|p| p.is_file())
        {
            Some(path) => code.push_str(&format!(
                "    ({route:?}, {mime:?}, include_bytes!({:?})),\n",
                path.display().to_string()
            )),
            None => missing.push(*rel),
        }
    }
    code.push_str("];\n");
    if !missing.is_empty() {
        println!(
            "cargo:warning=the dashboard is built without {} (npm could not install web/package.json); \
             install npm and rebuild to get the map",
            missing.join(", ")
        );
    }
    fs::write(out.join("vendor.rs"), code).expect("write vendor.rs");
}

/// A node_modules directory with the locked packages, installing them when needed.
fn node_modules(manifest: &Path, out: &Path) -> Option<PathBuf> {
    if let Ok(dir) = env::var("QUAKESTREAM_NODE_MODULES") {
        return Some(PathBuf::from(dir));
    }
    let web = manifest.join("web");
    let lock = fs::read(web.join("package-lock.json")).ok()?;
    let local = web.join("node_modules");
    if local.join("leaflet/dist/leaflet.js").is_file() {
        return Some(local);
    }
    // An install of our own, redone only when the lock file changes.
    let dir = out.join("npm");
    if fs::read(dir.join("package-lock.json")).ok().as_deref() == Some(&lock[..])
        && dir.join("node_modules/leaflet/dist/leaflet.js").is_file()
    {
        return Some(dir.join("node_modules"));
    }
    fs::create_dir_all(&dir).ok()?;
    fs::copy(web.join("package.json"), dir.join("package.json")).ok()?;
    fs::copy(web.join("package-lock.json"), dir.join("package-lock.json")).ok()?;
    let status = Command::new("npm")
        .args([
            "ci",
            "--omit=dev",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
        ])
        .current_dir(&dir)
        .status();
    match status {
        Ok(s) if s.success() => Some(dir.join("node_modules")),
        Ok(s) => {
            println!("cargo:warning=npm ci in {} failed ({s})", dir.display());
            None
        }
        Err(e) => {
            println!("cargo:warning=npm not found ({e})");
            None
        }
    }
}
