//! The public API: auth (cookies, CSRF, API keys, rate limit), roles, secrets at rest, validation,
//! OpenAPI and the embeddable connect URL.

use portico_tests::client::Api;
use portico_tests::portico::Portico;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn health_openapi_and_login() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let anon = Api::new(&p)?;
    assert_eq!(
        anon.request(Method::GET, "/api/__healthcheck", None).await?,
        (200, json!({ "ok": true }))
    );
    let (s, doc) = anon.request(Method::GET, "/api/openapi.json", None).await?;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/api/v1/auth/login",
        "/api/v1/connections/{id}",
        "/api/v1/sessions",
        "/api/v1/sessions/{id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let (s, body) = anon.request(Method::GET, "/api/v1/connections", None).await?;
    assert_eq!((s, body["error"].as_str()), (401, Some("authentication required")));
    let mut bad = Api::new(&p)?;
    let err = bad.login("admin", "wrong-password").await.unwrap_err().to_string();
    assert!(
        err.contains("401") && err.contains("invalid username or password"),
        "{err}"
    );
    let admin = Api::admin(&p).await?;
    let me = admin.ok(Method::GET, "/api/v1/auth/me", None).await?;
    assert_eq!(me["user"]["role"], "admin");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn csrf_is_required_for_cookie_writes_but_not_for_api_keys() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let mut admin = Api::admin(&p).await?;
    let body = json!({ "protocol": "ssh", "host": "127.0.0.1", "username": "u", "password": "p" });
    let csrf = admin.csrf.take();
    let (s, v) = admin
        .request(Method::POST, "/api/v1/connections", Some(body.clone()))
        .await?;
    assert_eq!((s, v["error"].as_str()), (403, Some("missing or invalid csrf token")));
    admin.csrf = Some("forged".into());
    assert_eq!(
        admin
            .request(Method::POST, "/api/v1/connections", Some(body.clone()))
            .await?
            .0,
        403
    );
    admin.csrf = csrf;
    assert_eq!(
        admin
            .request(Method::POST, "/api/v1/connections", Some(body.clone()))
            .await?
            .0,
        201
    );

    let key = admin
        .ok(
            Method::POST,
            "/api/v1/api-keys",
            Some(json!({ "name": "ci", "scope": "admin" })),
        )
        .await?;
    let mut bot = Api::new(&p)?;
    bot.bearer = key["key"].as_str().map(str::to_owned);
    assert_eq!(
        bot.request(Method::POST, "/api/v1/connections", Some(body.clone()))
            .await?
            .0,
        201
    );
    let list = bot.ok(Method::GET, "/api/v1/connections", None).await?;
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let s = bot
        .ok(
            Method::POST,
            "/api/v1/sessions",
            Some(json!({ "connection_id": list[0]["id"] })),
        )
        .await?;
    for field in ["session_id", "token", "ws_url", "connect_url", "expires_at"] {
        assert!(s.get(field).is_some(), "session response lacks {field}");
    }
    let connect_url = s["connect_url"].as_str().unwrap_or_default();
    let (before, fragment) = connect_url.split_once('#').expect("secret in the fragment");
    assert!(before.ends_with("/connect") && !before.contains(s["token"].as_str().unwrap_or("-")));
    assert!(fragment.contains("token="));
    bot.bearer = Some("pk_not-a-real-key".into());
    assert_eq!(bot.request(Method::GET, "/api/v1/connections", None).await?.0, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_is_rate_limited() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::new(&p)?;
    for _ in 0..5 {
        let (s, _) = api
            .request(
                Method::POST,
                "/api/v1/auth/login",
                Some(json!({ "username": "admin", "password": "nope" })),
            )
            .await?;
        assert_eq!(s, 401);
    }
    // Even the right password is refused while the limit holds.
    let (s, v) = api
        .request(
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({ "username": "admin", "password": p.admin_password })),
        )
        .await?;
    assert_eq!(
        (s, v["error"].as_str()),
        (429, Some("too many attempts, try again later"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_encrypted_at_rest_and_never_returned() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let secret = format!("pw-{}", uuid::Uuid::new_v4());
    let key = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        uuid::Uuid::new_v4()
    );
    let id = admin
        .create_connection(
            json!({ "protocol": "ssh", "host": "10.9.9.9", "username": "u", "password": secret, "private_key": key }),
        )
        .await?;
    for path in ["/api/v1/connections".to_owned(), format!("/api/v1/connections/{id}")] {
        let v = admin.ok(Method::GET, &path, None).await?;
        let text = v.to_string();
        assert!(
            !text.contains(&secret) && !text.contains("PRIVATE KEY"),
            "secret leaked in {path}: {text}"
        );
    }
    let c = admin
        .ok(Method::GET, &format!("/api/v1/connections/{id}"), None)
        .await?;
    assert_eq!(
        (c["has_password"].as_bool(), c["has_private_key"].as_bool()),
        (Some(true), Some(true))
    );
    // Update without secrets keeps them; clear removes one.
    let c = admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{id}"),
            Some(json!({ "protocol": "ssh", "host": "10.9.9.8", "username": "u2" })),
        )
        .await?;
    assert_eq!(
        (c["has_password"].as_bool(), c["host"].as_str()),
        (Some(true), Some("10.9.9.8"))
    );
    let c = admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{id}"),
            Some(json!({ "protocol": "ssh", "host": "10.9.9.8", "username": "u2", "clear_private_key": true })),
        )
        .await?;
    assert_eq!(c["has_private_key"].as_bool(), Some(false));
    // The database files hold no plaintext.
    for entry in std::fs::read_dir(&p.data_dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("portico.db"))
        {
            let bytes = std::fs::read(&path)?;
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plaintext password in {}",
                path.display()
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn users_see_but_do_not_manage_connections() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let alice_id = admin
        .ok(
            Method::POST,
            "/api/v1/users",
            Some(json!({ "username": "alice", "password": "alice-pass-1", "role": "user" })),
        )
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (s, v) = admin
        .request(
            Method::POST,
            "/api/v1/users",
            Some(json!({ "username": "alice", "password": "alice-pass-1" })),
        )
        .await?;
    assert_eq!((s, v["error"].as_str()), (409, Some("username already exists")));
    let id = admin
        .create_connection(json!({ "protocol": "ssh", "host": "127.0.0.1", "username": "u" }))
        .await?;
    let mut alice = Api::new(&p)?;
    alice.login("alice", "alice-pass-1").await?;
    async fn count(api: &Api) -> anyhow::Result<Option<usize>> {
        Ok(api
            .ok(Method::GET, "/api/v1/connections", None)
            .await?
            .as_array()
            .map(Vec::len))
    }
    assert_eq!(count(&alice).await?, Some(0), "nothing is granted yet");
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{id}/grants"),
            Some(json!({ "user_ids": [alice_id] })),
        )
        .await?;
    assert_eq!(count(&alice).await?, Some(1));
    let (s, v) = alice
        .request(
            Method::POST,
            "/api/v1/connections",
            Some(json!({ "protocol": "ssh", "host": "h" })),
        )
        .await?;
    assert_eq!((s, v["error"].as_str()), (403, Some("admin role required")));
    assert_eq!(
        alice
            .request(Method::DELETE, &format!("/api/v1/connections/{id}"), None)
            .await?
            .0,
        403
    );
    assert_eq!(alice.request(Method::GET, "/api/v1/users", None).await?.0, 403);
    // Alice can start a session, and cannot end another user's.
    let mine = alice.create_session(&id).await?;
    let theirs = admin.create_session(&id).await?;
    let sid = theirs["session_id"].as_str().unwrap_or_default();
    assert_eq!(
        alice
            .request(Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
            .await?
            .0,
        404
    );
    let sid = mine["session_id"].as_str().unwrap_or_default();
    assert_eq!(
        admin
            .request(Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
            .await?
            .0,
        204
    );
    Ok(())
}
