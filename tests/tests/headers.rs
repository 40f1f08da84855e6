//! Security headers of the real binary: HSTS and nosniff everywhere, `no-store` on the API, and the CSP of
//! the web client (WebSockets only to the configured bridge, framing only of `/connect` by allowed origins).

use portico_tests::client::Api;
use portico_tests::portico::{Options, Portico};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

async fn send(api: &Api, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, HeaderMap, String)> {
    let mut req = api.http.request(method, format!("{}{path}", api.base));
    if let Some(c) = &api.csrf {
        req = req.header("x-csrf-token", c);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    Ok((status, headers, res.text().await?))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The value of one CSP directive (`None` when absent).
fn directive(h: &HeaderMap, name: &str) -> Option<String> {
    header(h, "content-security-policy")?
        .split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

#[track_caller]
fn assert_secure(what: &str, h: &HeaderMap, cache: &str) {
    assert_eq!(
        header(h, "strict-transport-security"),
        Some("max-age=31536000"),
        "{what}: {h:?}"
    );
    assert_eq!(header(h, "x-content-type-options"), Some("nosniff"), "{what}: {h:?}");
    assert_eq!(header(h, "cache-control"), Some(cache), "{what}: {h:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_answers_are_never_stored_and_everything_is_hsts_and_nosniff() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let mut api = Api::new(&p)?;
    let (s, h, body) = send(
        &api,
        Method::POST,
        "/api/v1/auth/login",
        Some(json!({ "username": "admin", "password": p.admin_password })),
    )
    .await?;
    assert_eq!(s, 200, "{body}");
    assert_secure("login", &h, "no-store");
    let login: Value = serde_json::from_str(&body)?;
    api.csrf = login["csrf_token"].as_str().map(str::to_owned);
    assert!(api.csrf.is_some(), "{body}");

    let (s, h, body) = send(&api, Method::POST, "/api/v1/api-keys", Some(json!({ "name": "cache" }))).await?;
    assert_eq!(s, 201, "{body}");
    assert!(body.contains("pk_"), "{body}");
    assert_secure("api key creation", &h, "no-store");

    let anon = Api::new(&p)?;
    for (path, status) in [
        ("/api/v1/connections", 401),
        ("/api/v1/no-such-thing", 404),
        ("/internal/v1/token-keys", 401),
    ] {
        let (s, h, body) = send(&anon, Method::GET, path, None).await?;
        assert_eq!(s, status, "{path}: {body}");
        assert_secure(path, &h, "no-store");
    }
    let (s, h, body) = send(
        &anon,
        Method::POST,
        "/api/v1/auth/login",
        Some(json!({ "username": 1 })),
    )
    .await?;
    assert!((400..500).contains(&s), "{s} {body}");
    assert_secure("rejected login body", &h, "no-store");

    for page in ["/", "/connect", "/app.js"] {
        let (s, h, _) = send(&anon, Method::GET, page, None).await?;
        assert_eq!(s, 200, "{page}");
        assert_secure(page, &h, "no-cache");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_connect_only_to_the_bridge_and_cannot_be_framed() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let bridge = p.url.replacen("https://", "wss://", 1);
    let anon = Api::new(&p)?;
    for page in ["/", "/connect", "/index.html"] {
        let (s, h, body) = send(&anon, Method::GET, page, None).await?;
        assert_eq!(s, 200, "{page}");
        let connect = directive(&h, "connect-src").unwrap_or_default();
        assert_eq!(connect, format!("'self' {bridge}"), "{page}: {h:?}");
        assert_eq!(directive(&h, "frame-ancestors").as_deref(), Some("'none'"), "{page}");
        assert_eq!(header(&h, "x-frame-options"), Some("DENY"), "{page}");
        assert!(
            body.contains(&format!("<meta name=\"portico-bridge\" content=\"{bridge}\">")),
            "{page}: {body}"
        );
    }
    let api = Api::admin(&p).await?;
    let conn = api
        .create_connection(json!({ "name": "x", "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "u", "password": "p" }))
        .await?;
    let s = api.create_session(&conn).await?;
    let connect_url = s["connect_url"].as_str().unwrap_or_default();
    assert!(!connect_url.contains("ws="), "the link names no bridge: {connect_url}");
    assert_eq!(
        s["ws_url"].as_str(),
        Some(
            format!(
                "{bridge}/bridge/v1/ws?session={}",
                s["session_id"].as_str().unwrap_or("-")
            )
            .as_str()
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn embed_origins_may_frame_the_connect_page_and_nothing_else() -> anyhow::Result<()> {
    let p = Portico::start_with(Options {
        extra_args: vec![
            "--embed-origins".into(),
            "https://app.example".into(),
            "--bridge-public-url".into(),
            "wss://bridge.example:9443/".into(),
        ],
        ..Default::default()
    })?;
    let anon = Api::new(&p)?;
    let (_, h, body) = send(&anon, Method::GET, "/connect", None).await?;
    assert_eq!(directive(&h, "frame-ancestors").as_deref(), Some("https://app.example"));
    assert_eq!(header(&h, "x-frame-options"), None, "{h:?}");
    assert_eq!(
        directive(&h, "connect-src").as_deref(),
        Some("'self' wss://bridge.example:9443")
    );
    assert!(body.contains("content=\"wss://bridge.example:9443\""), "{body}");
    for page in ["/", "/app.js"] {
        let (_, h, _) = send(&anon, Method::GET, page, None).await?;
        assert_eq!(directive(&h, "frame-ancestors").as_deref(), Some("'none'"), "{page}");
        assert_eq!(header(&h, "x-frame-options"), Some("DENY"), "{page}");
    }
    drop(p);

    let p = Portico::start_with(Options {
        extra_env: vec![(
            "PORTICO_EMBED_ORIGINS".into(),
            "https://a.example,https://b.example:8443".into(),
        )],
        ..Default::default()
    })?;
    let (_, h, _) = send(&Api::new(&p)?, Method::GET, "/connect", None).await?;
    assert_eq!(
        directive(&h, "frame-ancestors").as_deref(),
        Some("https://a.example https://b.example:8443")
    );
    drop(p);

    for bad in [
        "https://*.example",
        "https://app.example/path",
        "https://app.example; script-src *",
    ] {
        let err = match Portico::start_with(Options {
            extra_args: vec!["--embed-origins".into(), bad.into()],
            ..Default::default()
        }) {
            Ok(_) => anyhow::bail!("portico started with --embed-origins {bad:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("invalid embed origin"), "{bad}: {err}");
    }
    Ok(())
}
