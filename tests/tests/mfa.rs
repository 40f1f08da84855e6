//! Two-factor authentication (TOTP) against the real binary: enrolment, the second step of a login, a
//! code that works once, a limit of wrong codes, recovery codes, an admin's reset, and a role that requires
//! it. The test computes codes with the webapp's own RFC 6238 function (checked there against the RFC's
//! vectors).

use portico_tests::client::Api;
use portico_tests::portico::Portico;
use portico_webapp::mfa;
use reqwest::Method;
use serde_json::{Value, json};

/// The first step: the password; returns the response body.
async fn password_step(api: &Api, name: &str) -> anyhow::Result<Value> {
    api.ok(
        Method::POST,
        "/api/v1/auth/login",
        Some(json!({ "username": name, "password": format!("{name}-password-1") })),
    )
    .await
}

fn now_step() -> i64 {
    mfa::step(portico_webapp::now_unix())
}

fn code_at(secret: &[u8], step: i64) -> String {
    format!("{:06}", mfa::code(secret, step))
}

async fn second_step(api: &Api, token: &Value, field: &str, value: &str) -> anyhow::Result<(u16, Value)> {
    api.request(
        Method::POST,
        "/api/v1/auth/login/mfa",
        Some(json!({ "mfa_token": token, field: value })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_enrolment_login_replay_recovery_and_reset() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let carol_id = admin.create_user("carol", "user").await?;
    let mut carol = Api::new(&p)?;
    carol.login("carol", "carol-password-1").await?;
    let enrol = carol.ok(Method::POST, "/api/v1/auth/mfa/enrol", None).await?;
    let secret = data_encoding::BASE32_NOPAD.decode(enrol["secret"].as_str().unwrap_or_default().as_bytes())?;
    assert!(
        enrol["otpauth_uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("otpauth://totp/Portico:carol?secret="))
    );
    assert!(enrol["qr_svg"].as_str().is_some_and(|s| s.contains("<svg")));
    let (s, v) = carol
        .request(
            Method::POST,
            "/api/v1/auth/mfa/confirm",
            Some(json!({ "code": code_at(&secret, now_step() + 5) })),
        )
        .await?;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("wrong code")),
        "a code far from now"
    );
    // s0 confirms the enrolment (a code is accepted one step around now).
    let s0 = now_step();
    let confirmed = carol
        .ok(
            Method::POST,
            "/api/v1/auth/mfa/confirm",
            Some(json!({ "code": code_at(&secret, s0) })),
        )
        .await?;
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    assert_eq!(recovery.len(), 10);
    let (s, _) = carol.request(Method::POST, "/api/v1/auth/mfa/enrol", None).await?;
    assert_eq!(s, 409, "enrolling again needs an admin's reset");

    // The password alone gives no cookie now.
    let fresh = Api::new(&p)?;
    let first = password_step(&fresh, "carol").await?;
    assert_eq!(first["mfa_required"], true);
    assert!(first.get("csrf_token").is_none(), "{first}");
    assert_eq!(fresh.request(Method::GET, "/api/v1/auth/me", None).await?.0, 401);
    let token = first["mfa_token"].clone();
    // The code that confirmed the enrolment was used: it cannot log in (replay).
    let (s, v) = second_step(&fresh, &token, "code", &code_at(&secret, s0)).await?;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("this code was used already: wait for the next one"))
    );
    // A later step's code (the next one, or now's if the machine was slow) logs in, once.
    let s1 = now_step().max(s0 + 1);
    let (s, v) = second_step(&fresh, &token, "code", &code_at(&secret, s1)).await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(fresh.request(Method::GET, "/api/v1/auth/me", None).await?.0, 200);
    let other = Api::new(&p)?;
    let token = password_step(&other, "carol").await?["mfa_token"].clone();
    let (s, _) = second_step(&other, &token, "code", &code_at(&secret, s1)).await?;
    assert_eq!(s, 401, "a used code never works again, not even in another login");

    // Wrong codes: five, then the step is over even for a right code; guesses in parallel get no more.
    let token = password_step(&other, "carol").await?["mfa_token"].clone();
    let guesses = futures_util::future::join_all((0..20).map(|i| {
        let token = token.clone();
        let other = &other;
        async move { second_step(other, &token, "code", &format!("{:06}", 100_000 + i)).await }
    }))
    .await;
    let wrong = guesses
        .iter()
        .flatten()
        .filter(|(_, v)| v["error"] == "wrong code")
        .count();
    assert!(wrong <= 5, "{wrong} of 20 parallel guesses were checked");
    let (s, v) = second_step(&other, &token, "recovery_code", &recovery[0]).await?;
    assert_eq!(
        (s, v["error"].as_str()),
        (
            401,
            Some("this sign-in expired or had too many wrong codes: log in again")
        )
    );

    // A recovery code (typed loosely) works once.
    let token = password_step(&other, "carol").await?["mfa_token"].clone();
    let typed = recovery[0].to_uppercase().replace('-', " ");
    assert_eq!(second_step(&other, &token, "recovery_code", &typed).await?.0, 200);
    let token = password_step(&other, "carol").await?["mfa_token"].clone();
    assert_eq!(second_step(&other, &token, "recovery_code", &recovery[0]).await?.0, 401);

    // Lost phone: an admin resets; the password alone logs in again.
    let (s, _) = carol
        .request(Method::DELETE, &format!("/api/v1/users/{carol_id}/mfa"), None)
        .await?;
    assert_eq!(s, 403, "only an admin resets");
    admin
        .ok(Method::DELETE, &format!("/api/v1/users/{carol_id}/mfa"), None)
        .await?;
    let mut again = Api::new(&p)?;
    again.login("carol", "carol-password-1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_requires_two_factors_may_only_enrol_until_it_has_them() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    admin.create_user("dave", "user").await?;
    let (s, _) = admin
        .request(
            Method::PUT,
            "/api/v1/settings",
            Some(json!({ "mfa_required_roles": ["root"] })),
        )
        .await?;
    assert_eq!(s, 400);
    admin
        .ok(
            Method::PUT,
            "/api/v1/settings",
            Some(json!({ "mfa_required_roles": ["user"] })),
        )
        .await?;
    let mut dave = Api::new(&p)?;
    dave.login("dave", "dave-password-1").await?;
    let me = dave.ok(Method::GET, "/api/v1/auth/me", None).await?;
    assert_eq!(me["mfa_enrolment_required"], true);
    for (m, path) in [
        (Method::GET, "/api/v1/connections"),
        (Method::GET, "/api/v1/sessions"),
        (Method::POST, "/api/v1/api-keys"),
    ] {
        let (s, v) = dave.request(m.clone(), path, Some(json!({ "name": "k" }))).await?;
        assert_eq!(
            (s, v["error"].as_str()),
            (
                403,
                Some("your role requires two-factor authentication: set it up first")
            ),
            "{m} {path}"
        );
    }
    let enrol = dave.ok(Method::POST, "/api/v1/auth/mfa/enrol", None).await?;
    let secret = data_encoding::BASE32_NOPAD.decode(enrol["secret"].as_str().unwrap_or_default().as_bytes())?;
    dave.ok(
        Method::POST,
        "/api/v1/auth/mfa/confirm",
        Some(json!({ "code": code_at(&secret, now_step()) })),
    )
    .await?;
    assert_eq!(
        dave.request(Method::GET, "/api/v1/connections", None).await?.0,
        200,
        "enrolled: everything again"
    );
    // Admins are not in the list: unaffected.
    assert_eq!(admin.request(Method::GET, "/api/v1/connections", None).await?.0, 200);
    Ok(())
}
