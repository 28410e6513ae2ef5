//! The web UI at `/ui/`: a page, its script and style, and the chart
//! library (uPlot, from npm through `build.rs`), all embedded in the
//! binary so a master serves it with nothing else installed. The files
//! hold no cluster data; the page calls `/api/v1/` with the token it is
//! given (in the URL's `#token=` or pasted), so they are served without
//! one.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the UI is served.
pub const UI_PATH: &str = "/ui/";

/// Each file: its path under `/ui/`, its type and its bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!(concat!(env!("OUT_DIR"), "/uPlot.iife.min.js")),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!(concat!(env!("OUT_DIR"), "/uPlot.min.css")),
    ),
];

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new().route("/ui", get(|| async { Redirect::permanent(UI_PATH) }));
    for &(path, kind, bytes) in FILES {
        router = router.route(&format!("{UI_PATH}{path}"), get(move || serve(kind, bytes)));
    }
    router
}

async fn serve(kind: &'static str, bytes: &'static [u8]) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            // Revalidated on each load, so an upgraded master's UI shows at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        bytes,
    )
        .into_response()
}
