//! The web client (built from `web-client/` by `build.rs`), embedded in the binary and served with a strict CSP.
//!
//! The CSP's `connect-src` lists only this webapp and the configured bridge origins, and the page learns the
//! bridge's address from a `<meta name="portico-bridge">` this module puts into `index.html`: a URL (such as
//! a `connect_url` somebody sends) can never point the page at another WebSocket server. No page may be
//! framed (`frame-ancestors 'none'`, `X-Frame-Options: DENY`) except the embed page `/connect`, and that one
//! only by the origins an admin allows (`--embed-origins`).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::{AppState, WebappConfig};

#[derive(rust_embed::RustEmbed)]
#[folder = "../web-client/dist"]
struct Dist;

/// Whether a page may be framed by the configured embedding origins.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Deny,
    EmbedOrigins,
}

/// The Content-Security-Policy of every file: scripts and styles from this origin only, WebSockets to the
/// configured bridges only, framing by nobody (or, for the embed page, by the allowed origins).
fn csp(cfg: &WebappConfig, framing: Framing) -> String {
    let mut connect = vec!["'self'".to_owned()];
    connect.extend(cfg.bridge_origins());
    let embedders = cfg.embed_origins();
    let ancestors = if framing == Framing::EmbedOrigins && !embedders.is_empty() {
        embedders.join(" ")
    } else {
        "'none'".to_owned()
    };
    format!(
        "default-src 'self'; connect-src {}; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
         script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}",
        connect.join(" ")
    )
}

fn html_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn serve(cfg: &WebappConfig, path: &str, framing: Framing) -> Response {
    let Some(file) = Dist::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let body = if path == "index.html" {
        // The one place the page learns where the bridge is.
        let meta = format!(
            "<meta name=\"portico-bridge\" content=\"{}\">\n</head>",
            html_attr(&cfg.bridge_ws_base())
        );
        String::from_utf8_lossy(&file.data)
            .replacen("</head>", &meta, 1)
            .into_bytes()
    } else {
        file.data.into_owned()
    };
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&csp(cfg, framing)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if framing == Framing::Deny || cfg.embed_origins.is_empty() {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    res
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|State(st): State<AppState>| async move { serve(&st.config, "index.html", Framing::Deny) }),
        )
        // The embed page may be framed by the applications an admin allows (Kasm-style embedding).
        .route(
            "/connect",
            get(|State(st): State<AppState>| async move { serve(&st.config, "index.html", Framing::EmbedOrigins) }),
        )
        .fallback(|State(st): State<AppState>, uri: Uri| async move {
            let path = uri.path().trim_start_matches('/');
            if path.starts_with("api/") || path.starts_with("internal/") || path.starts_with("bridge/") {
                return (
                    StatusCode::NOT_FOUND,
                    axum::Json(serde_json::json!({ "error": "no such endpoint" })),
                )
                    .into_response();
            }
            serve(&st.config, path, Framing::Deny)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(embed: &[&str]) -> WebappConfig {
        let mut cfg = WebappConfig::new(
            "sqlite::memory:".into(),
            [0; 32],
            "node-secret-0123456789".into(),
            "https://portico.example".into(),
        );
        cfg.bridge_public_url = "wss://bridge.example:9443/".into();
        cfg.embed_origins = embed.iter().map(|s| (*s).to_owned()).collect();
        cfg
    }

    #[test]
    fn connect_src_lists_only_the_configured_bridge() {
        let policy = csp(&config(&[]), Framing::Deny);
        assert!(
            policy.contains("connect-src 'self' wss://bridge.example:9443;"),
            "{policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        for wildcard in [" ws:", " wss:", " *"] {
            assert!(!policy.contains(&format!("{wildcard};")), "{policy}");
            assert!(!policy.contains(&format!("{wildcard} ")), "{policy}");
        }
    }

    #[test]
    fn only_the_embed_page_may_be_framed_and_only_by_the_allowed_origins() {
        let cfg = config(&["https://app.example", "https://other.example:8443"]);
        assert!(csp(&cfg, Framing::Deny).ends_with("frame-ancestors 'none'"));
        assert!(
            csp(&cfg, Framing::EmbedOrigins)
                .ends_with("frame-ancestors https://app.example https://other.example:8443")
        );
        assert!(csp(&config(&[]), Framing::EmbedOrigins).ends_with("frame-ancestors 'none'"));
    }
}
