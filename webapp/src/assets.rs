//! The web client (built from `web-client/` by `build.rs`), embedded in the binary and served with a strict CSP.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

#[derive(rust_embed::RustEmbed)]
#[folder = "../web-client/dist"]
struct Dist;

const CSP: &str = "default-src 'self'; connect-src 'self' wss: ws:; img-src 'self' data: blob:; \
                   style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; base-uri 'none'";

fn serve(path: &str, embeddable: bool) -> Response {
    let Some(file) = Dist::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let mut res = (StatusCode::OK, file.data.into_owned()).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if !embeddable {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    res
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { serve("index.html", false) }))
        // The embed page may be framed by another application (Kasm-style embedding).
        .route("/connect", get(|| async { serve("index.html", true) }))
        .fallback(|uri: Uri| async move {
            let path = uri.path().trim_start_matches('/');
            if path.starts_with("api/") || path.starts_with("internal/") || path.starts_with("bridge/") {
                return (
                    StatusCode::NOT_FOUND,
                    axum::Json(serde_json::json!({ "error": "no such endpoint" })),
                )
                    .into_response();
            }
            serve(path, false)
        })
}
