//! Single sign-on against the real binary: a real OpenID Provider (node-oidc-provider) driven by Chromium
//! (login, groups mapped, and the abuse: replayed state, login CSRF, forged and mis-addressed ID tokens,
//! key rotation), the identity-provider API, and local accounts restricted to admins.

use std::time::Duration;

use portico_tests::client::Api;
use portico_tests::idp::OidcProvider;
use portico_tests::peers::run_browser_script;
use portico_tests::portico::Portico;
use reqwest::Method;
use serde_json::{Value, json};

/// A group `helpdesk` and two connections: `granted` (granted to the group) and `other`; returns the
/// group's id.
async fn helpdesk_fixture(admin: &Api, granted: &str, other: &str) -> anyhow::Result<String> {
    let group = admin
        .ok(Method::POST, "/api/v1/groups", Some(json!({ "name": "helpdesk" })))
        .await?;
    let group_id = group["id"].as_str().unwrap_or_default().to_owned();
    let mut ids = Vec::new();
    for name in [granted, other] {
        let conn = json!({ "name": name, "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "u" });
        ids.push(admin.create_connection(conn).await?);
    }
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{}/grants", ids[0]),
            Some(json!({ "user_ids": [], "group_ids": [group_id] })),
        )
        .await?;
    Ok(group_id)
}

fn location_of(res: &reqwest::Response) -> String {
    let v = res.headers().get("location").and_then(|v| v.to_str().ok());
    v.unwrap_or_default().to_owned()
}

async fn oidc_provider(admin: &Api, idp: &OidcProvider, name: &str) -> anyhow::Result<Value> {
    admin
        .ok(
            Method::POST,
            "/api/v1/identity-providers",
            Some(json!({
                "kind": "oidc",
                "name": name,
                "oidc": { "issuer": idp.issuer, "client_id": idp.client_id },
                "client_secret": idp.client_secret,
                "mapping": { "roles": { "portico-admins": "admin" } },
            })),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_login_in_chromium_with_groups_and_its_abuse_refused() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let idp = OidcProvider::start(
        &format!("{}/api/v1/auth/oidc/callback", p.url),
        json!({ "alice": ["helpdesk", "vpn-users"] }),
    )?;
    let group_id = helpdesk_fixture(&admin, "helpdesk-box", "secret-box").await?;
    let provider = oidc_provider(&admin, &idp, "TestIdP").await?;
    assert_eq!(provider["has_client_secret"], true);
    assert!(
        provider.get("client_secret").is_none(),
        "the secret is never shown: {provider}"
    );
    assert_eq!(provider["redirect_uri"], format!("{}/api/v1/auth/oidc/callback", p.url));

    let out = run_browser_script(
        "sso_e2e.js",
        &[
            ("PORTICO_URL", p.url.as_str()),
            ("IDP_URL", idp.issuer.as_str()),
            ("PROVIDER", "TestIdP"),
        ],
        Duration::from_secs(240),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n--- provider log:\n{}\n--- portico log:\n{}", idp.log(), p.log()))?;
    assert!(out.contains("sso ok"), "{out}");
    assert!(!out.contains("blocked a request off loopback"), "{out}");

    // The user was created once (every later login found them by `sub`), and left the group at the last one.
    let users = admin.ok(Method::GET, "/api/v1/users?q=alice", None).await?;
    let alices: Vec<&Value> = users
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["username"] == "alice")
        .collect();
    assert_eq!(alices.len(), 1, "{users}");
    assert_eq!(alices[0]["provider_id"], provider["id"]);
    assert_eq!(alices[0]["role"], "user");
    let members = admin
        .ok(Method::GET, &format!("/api/v1/groups/{group_id}/members"), None)
        .await?;
    assert_eq!(members["user_ids"], json!([]), "{members}");
    // The refusals were logged with their reasons; the key set was fetched again after the rotation.
    let log = p.log();
    for reason in [
        "signature does not verify",
        "wrong audience",
        "already used",
        "another browser",
    ] {
        assert!(log.contains(reason), "no refusal {reason:?} in the log");
    }
    assert!(
        log.matches("Identity provider keys fetched").count() >= 2,
        "keys not fetched again after rotation"
    );
    // An SSO user has no Portico password: the password form refuses any.
    let (status, _, _) = login_status(&p, "alice", "any password: the provider is under test").await?;
    assert_eq!(status, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_provider_api_and_local_logins_for_admins_only() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    admin.create_user("dora", "user").await?;
    admin.create_user("otto", "auditor").await?;
    let mut dora = Api::new(&p)?;
    dora.login("dora", "dora-password-1").await?;
    let mut otto = Api::new(&p)?;
    otto.login("otto", "otto-password-1").await?;

    // Bad settings are refused with the reason; nothing is stored.
    for (body, reason) in [
        (
            json!({ "kind": "oidc", "name": "x", "oidc": { "issuer": "http://idp.example", "client_id": "c" } }),
            "https",
        ),
        (
            json!({ "kind": "oidc", "name": "x", "oidc": { "issuer": "https://idp.example", "client_id": "" } }),
            "client id",
        ),
        (json!({ "kind": "oidc", "name": "x" }), "needs the oidc settings"),
        (json!({ "kind": "saml", "name": "x" }), "unknown provider kind"),
        (
            json!({ "kind": "oidc", "name": "x", "oidc": { "issuer": "https://idp.example", "client_id": "c" },
                    "mapping": { "roles": { "g": "root" } } }),
            "unknown role",
        ),
        (
            json!({ "kind": "oidc", "name": "", "oidc": { "issuer": "https://idp.example", "client_id": "c" } }),
            "name",
        ),
    ] {
        let (status, v) = admin
            .request(Method::POST, "/api/v1/identity-providers", Some(body))
            .await?;
        assert_eq!(status, 400, "{v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(reason),
            "{v} lacks {reason:?}"
        );
    }
    assert_eq!(
        admin.ok(Method::GET, "/api/v1/identity-providers", None).await?,
        json!([])
    );

    // A provider on a closed loopback port (the tests send nothing off this machine).
    let issuer = format!("https://127.0.0.1:{}", portico_tests::peers::free_port());
    let good = json!({ "kind": "oidc", "name": "Corp", "oidc": { "issuer": issuer, "client_id": "portico" },
                       "client_secret": "s3cret-value" });
    // Only admins change providers; an auditor reads them (never the secret); a user sees nothing.
    let (status, _) = dora
        .request(Method::POST, "/api/v1/identity-providers", Some(good.clone()))
        .await?;
    assert_eq!(status, 403);
    let (status, _) = otto
        .request(Method::POST, "/api/v1/identity-providers", Some(good.clone()))
        .await?;
    assert_eq!(status, 403);
    let created = admin
        .ok(Method::POST, "/api/v1/identity-providers", Some(good.clone()))
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let (status, _) = dora.request(Method::GET, "/api/v1/identity-providers", None).await?;
    assert_eq!(status, 403);
    let seen = otto
        .ok(Method::GET, &format!("/api/v1/identity-providers/{id}"), None)
        .await?;
    assert_eq!(seen["has_client_secret"], true);
    assert!(!seen.to_string().contains("s3cret-value"), "{seen}");
    let (status, _) = admin
        .request(Method::POST, "/api/v1/identity-providers", Some(good))
        .await?;
    assert_eq!(status, 409, "names are unique");
    // An update without a secret keeps the secret.
    let updated = admin
        .ok(
            Method::PUT,
            &format!("/api/v1/identity-providers/{id}"),
            Some(json!({ "kind": "oidc", "name": "Corp SSO", "oidc": { "issuer": issuer, "client_id": "portico" } })),
        )
        .await?;
    assert_eq!(updated["has_client_secret"], true);
    assert_eq!(updated["name"], "Corp SSO");
    // The login page lists it (no secret, no issuer needed).
    let public = Api::new(&p)?.ok(Method::GET, "/api/v1/auth/providers", None).await?;
    assert_eq!(public["oidc"][0]["name"], "Corp SSO");
    assert_eq!(public["oidc"].as_array().map(Vec::len), Some(1));
    // An unreachable provider: the login start says so instead of hanging or failing blindly.
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(portico_bridge::control::client_tls_config(Some(&p.cert_sha256), None)?)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let res = http
        .get(format!("{}/api/v1/auth/oidc/{id}/login", p.url))
        .send()
        .await?;
    let location = location_of(&res);
    assert!(
        location.starts_with("/?sso_error=") && location.contains("unreachable"),
        "{location}"
    );
    // A callback with a made-up state is refused.
    let res = http
        .get(format!("{}/api/v1/auth/oidc/callback?code=x&state=forged", p.url))
        .send()
        .await?;
    let location = location_of(&res);
    assert!(
        location.contains("already%20used") || location.contains("already+used"),
        "{location}"
    );
    assert!(
        res.headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap_or("").starts_with("portico_session="))
    );

    // Local logins for admins only: dora's login session ends at once, her password no longer logs in
    // (after it was verified: the answer does not tell whether the password was right), the admin's does.
    admin
        .ok(
            Method::PUT,
            "/api/v1/settings",
            Some(json!({ "local_login_admins_only": true })),
        )
        .await?;
    let (status, _) = dora.request(Method::GET, "/api/v1/auth/me", None).await?;
    assert_eq!(status, 401, "dora's login session survived");
    let (status, v, _) = login_status(&p, "dora", "dora-password-1").await?;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("local accounts are disabled"),
        "{v}"
    );
    let (status, _, _) = login_status(&p, "dora", "wrong-password-1").await?;
    assert_eq!(status, 401);
    Api::admin(&p).await?;
    let settings = admin.ok(Method::GET, "/api/v1/settings", None).await?;
    assert_eq!(settings["local_login_admins_only"], true);
    admin
        .ok(
            Method::PUT,
            "/api/v1/settings",
            Some(json!({ "local_login_admins_only": false })),
        )
        .await?;
    dora.login("dora", "dora-password-1").await?;

    // Deleting the provider is admin-only and answers 404 after.
    admin
        .ok(Method::DELETE, &format!("/api/v1/identity-providers/{id}"), None)
        .await?;
    let (status, _) = admin
        .request(Method::GET, &format!("/api/v1/identity-providers/{id}"), None)
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

async fn login_status(p: &Portico, user: &str, password: &str) -> anyhow::Result<(u16, Value, Api)> {
    let api = Api::new(p)?;
    let (status, v) = api
        .request(
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({ "username": user, "password": password })),
        )
        .await?;
    Ok((status, v, api))
}

#[tokio::test(flavor = "multi_thread")]
async fn ldap_directory_logins_through_portico() -> anyhow::Result<()> {
    use portico_tests::slapd::Slapd;
    let mut slapd = Slapd::start()?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    helpdesk_fixture(&admin, "desk-box", "other-box").await?;
    // Plain LDAP without StartTLS would send passwords in the clear: refused.
    let mut plain = slapd.settings(true);
    plain["starttls"] = json!(false);
    let (status, v) = admin
        .request(
            Method::POST,
            "/api/v1/identity-providers",
            Some(json!({ "kind": "ldap", "name": "Directory", "ldap": plain })),
        )
        .await?;
    assert_eq!(status, 400, "{v}");
    let provider = admin
        .ok(
            Method::POST,
            "/api/v1/identity-providers",
            Some(
                json!({ "kind": "ldap", "name": "Directory", "ldap": slapd.settings(false),
                         "mapping": { "roles": { "admins": "admin" } } }),
            ),
        )
        .await?;
    let provider_id = provider["id"].as_str().unwrap_or_default().to_owned();
    let public = Api::new(&p)?.ok(Method::GET, "/api/v1/auth/providers", None).await?;
    assert_eq!(public["ldap"], true);

    // alice (helpdesk, vpn in the directory) logs in over LDAPS with her directory password and sees the
    // connection granted to Portico's helpdesk group, and nothing else.
    let (status, v, alice) = login_status(&p, "alice", Slapd::password("alice")).await?;
    assert_eq!(status, 200, "{v}\n{}", p.log());
    assert_eq!(v["user"]["provider_id"], provider_id.as_str());
    assert_eq!(v["user"]["role"], "user");
    let mut alice = alice;
    alice.csrf = v["csrf_token"].as_str().map(str::to_owned);
    let seen = alice.ok(Method::GET, "/api/v1/connections", None).await?;
    let names: Vec<&str> = seen
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["desk-box"]);
    // Her password is the directory's: she cannot set a Portico one.
    let (status, _) = alice
        .request(
            Method::POST,
            "/api/v1/auth/password",
            Some(json!({ "current_password": Slapd::password("alice"), "new_password": "another-password-1" })),
        )
        .await?;
    assert_eq!(status, 403);
    // carol is in the directory's admins: mapped to the admin role.
    let (status, v, _) = login_status(&p, "carol", Slapd::password("carol")).await?;
    assert_eq!((status, v["user"]["role"].as_str()), (200, Some("admin")), "{v}");
    // A name with DN and filter specials logs in as itself.
    let (status, v, _) = login_status(&p, "o'brien, jr (ops)", Slapd::password("o'brien, jr (ops)")).await?;
    assert_eq!(status, 200, "{v}");

    // Wrong and hostile attempts: 401, nobody logged in.
    for (user, password, what) in [
        ("alice", "wrong-Passw0rd-1", "wrong password"),
        ("nobody", "whatever-Passw0rd-1", "unknown user"),
        ("alice", "", "empty password (an unauthenticated bind would succeed)"),
        ("*", Slapd::password("alice"), "wildcard name"),
        ("alice)(uid=*", Slapd::password("alice"), "filter injection"),
        (
            "star*",
            Slapd::password("starfish"),
            "a wildcard name with another user's password",
        ),
        ("dup", "dup-Passw0rd-1", "a name that matches two entries"),
    ] {
        let (status, v, _) = login_status(&p, user, password).await?;
        assert!(
            status == 401 || (status == 400 && password.is_empty()),
            "{what}: {status} {v}"
        );
    }

    // The directory down: a clear 503 (not a wrong password), and alice is not locked out by it.
    slapd.stop();
    let (status, v, _) = login_status(&p, "alice", Slapd::password("alice")).await?;
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("unavailable"), "{v}");
    slapd.launch()?;
    // StartTLS on the plain port works too.
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/identity-providers/{provider_id}"),
            Some(
                json!({ "kind": "ldap", "name": "Directory", "ldap": slapd.settings(true),
                         "mapping": { "roles": { "admins": "admin" } } }),
            ),
        )
        .await?;
    let (status, v, _) = login_status(&p, "alice", Slapd::password("alice")).await?;
    assert_eq!(status, 200, "{v}");

    // Guessing goes through the login throttle: parallel wrong passwords for bob are cut off, and the
    // refused ones never reach the directory.
    let before = slapd.connections();
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let api = Api::new(&p)?;
        tasks.push(tokio::spawn(async move {
            api.request(
                Method::POST,
                "/api/v1/auth/login",
                Some(json!({ "username": "bob", "password": "guess-Passw0rd-1" })),
            )
            .await
            .map(|(s, _)| s)
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await??);
    }
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(throttled + refused, 30, "{statuses:?}");
    assert!(
        throttled >= 20,
        "only {throttled} of 30 parallel guesses throttled: {statuses:?}"
    );
    let reached = slapd.connections() - before;
    assert!(
        reached <= refused,
        "{reached} directory connections for {refused} admitted guesses"
    );
    Ok(())
}
