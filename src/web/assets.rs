//! The dashboard's files, compiled into the binary: our own pages, scripts and styles from
//! `web/src/`, and the front-end libraries build.rs bundled from the npm registry.

use axum::response::Response;

include!(concat!(env!("OUT_DIR"), "/vendor.rs"));

pub const INDEX: &str = include_str!("../../web/src/index.html");
pub const PIPELINE: &str = include_str!("../../web/src/pipeline.html");

/// Our own assets under `/assets/`.
const OWN: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/src/app.js"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/src/common.js"),
    ),
    (
        "pipeline.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/src/pipeline.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/src/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../web/src/favicon.svg"),
    ),
];

pub fn page(body: &'static str) -> Response {
    super::api::html(body)
}

pub fn own(file: &str) -> Option<(&'static str, &'static [u8])> {
    OWN.iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, mime, body)| (*mime, body.as_bytes()))
}

pub fn vendor(path: &str) -> Option<(&'static str, &'static [u8])> {
    VENDOR
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|(_, mime, body)| (*mime, *body))
}

/// The bundled libraries the map cannot work without, missing from this build (npm was not
/// available when it was compiled).
pub fn missing() -> Vec<&'static str> {
    [
        "leaflet.js",
        "leaflet.css",
        "topojson-client.js",
        "countries-50m.json",
    ]
    .into_iter()
    .filter(|f| vendor(f).is_none())
    .collect()
}
