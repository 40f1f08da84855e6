//! OpenID Connect login (authorization code flow with PKCE): the provider's discovery document and keys
//! (cached, keys fetched again when a token names an unknown one: rotation), the ID token check, which is
//! pure (token, keys and time in; claims or a reason out), and the HTTP glue around them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How long a discovery document or key set is used before it is fetched again.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// An unknown key id fetches the key set again at most this often per provider (a forged `kid` cannot
/// make Portico hammer the provider); the first rotation after a quiet time is seen at once.
const REFETCH_MIN: Duration = Duration::from_secs(10);
/// Clock skew allowed on `exp`, `iat` and `nbf`.
const LEEWAY_SECS: i64 = 60;
/// Largest response read from a provider.
const MAX_RESPONSE: usize = 1 << 20;
/// Largest ID token accepted.
const MAX_TOKEN: usize = 64 * 1024;

/// An OIDC provider's settings (the client secret is kept apart, sealed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer, exactly as in its ID tokens; the discovery document is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim that lists the user's groups (a string array).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The claim whose value becomes the Portico user name.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// CA certificates (PEM) to trust for the provider besides the machine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["profile".into(), "email".into(), "groups".into()]
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_username_claim() -> String {
    "preferred_username".into()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OidcError {
    #[error("invalid provider settings: {0}")]
    Config(String),
    #[error("identity provider unreachable: {0}")]
    Unreachable(String),
    #[error("identity provider answered badly: {0}")]
    Protocol(String),
    #[error("identity provider refused the login: {0}")]
    Refused(String),
    #[error("invalid id token: {0}")]
    Token(String),
}

impl OidcConfig {
    pub fn validate(&self) -> Result<(), OidcError> {
        let bad = |m: &str| Err(OidcError::Config(m.into()));
        let u = url::Url::parse(&self.issuer).map_err(|e| OidcError::Config(format!("issuer: {e}")))?;
        if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
            return bad("the issuer must be a plain https url");
        }
        match u.scheme() {
            "https" => {}
            "http" if is_loopback(&u) => {}
            _ => return bad("the issuer must be an https url (plain http only on a loopback address)"),
        }
        if self.client_id.is_empty() || self.client_id.len() > 256 {
            return bad("the client id must be 1 to 256 bytes");
        }
        if self.groups_claim.is_empty() || self.username_claim.is_empty() {
            return bad("claim names must not be empty");
        }
        if self
            .scopes
            .iter()
            .any(|s| s.is_empty() || s.contains(|c: char| c.is_whitespace()))
        {
            return bad("scopes must be single words");
        }
        if let Some(pem) = &self.ca_pem {
            crate::tls::roots_from_pem(pem).map_err(|e| OidcError::Config(format!("ca_pem: {e}")))?;
        }
        Ok(())
    }
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// The parts of the discovery document Portico uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
}

// ---- pure parts

/// A PKCE verifier and its S256 challenge (RFC 7636).
pub fn pkce_pair() -> (String, String) {
    let verifier = crate::crypto::random_token();
    (verifier.clone(), pkce_challenge(&verifier))
}

pub fn pkce_challenge(verifier: &str) -> String {
    use sha2::Digest as _;
    b64url(&sha2::Sha256::digest(verifier.as_bytes()))
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()
}

/// The URL the browser is sent to.
pub fn authorization_url(
    d: &Discovery,
    cfg: &OidcConfig,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    challenge: &str,
) -> Result<String, OidcError> {
    let mut u = url::Url::parse(&d.authorization_endpoint)
        .map_err(|e| OidcError::Protocol(format!("authorization endpoint: {e}")))?;
    let mut scopes = vec!["openid".to_owned()];
    scopes.extend(cfg.scopes.iter().filter(|s| *s != "openid").cloned());
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(u.into())
}

/// A JSON Web Key set (RFC 7517), the public keys only.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

/// What an ID token must say.
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub now: i64,
}

/// The outcome of checking a token's signature against a key set.
#[derive(Debug, PartialEq)]
pub enum KeyLookup {
    /// The token names a key id the set does not have: fetch the set again (rotation), then retry.
    UnknownKey,
    Checked(Result<Map<String, Value>, OidcError>),
}

/// Check an ID token: its algorithm (asymmetric only), its signature by a key of `jwks`, then `iss`,
/// `aud` (and `azp` when there are several audiences), `exp`, `iat`, `nbf`, `nonce` and `sub`.
pub fn verify_id_token(token: &str, jwks: &Jwks, want: &Expected<'_>) -> KeyLookup {
    let bad = |m: String| KeyLookup::Checked(Err(OidcError::Token(m)));
    if token.len() > MAX_TOKEN {
        return bad("too long".into());
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return bad("not a signed jwt (three parts)".into());
    };
    let (Some(header), Some(payload), Some(sig)) = (unb64url(h), unb64url(p), unb64url(s)) else {
        return bad("not base64url".into());
    };
    let Ok(header) = serde_json::from_slice::<Map<String, Value>>(&header) else {
        return bad("header is not a json object".into());
    };
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let Some(verify_alg) = algorithm(alg) else {
        return bad(format!("algorithm {alg:?} is not accepted"));
    };
    if header.contains_key("crit") {
        return bad("critical header extensions are not supported".into());
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Jwk> = jwks
        .keys
        .iter()
        .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg))
        .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
        .collect();
    if candidates.is_empty() {
        return if kid.is_some() {
            KeyLookup::UnknownKey
        } else {
            bad("no key of the provider fits the token".into())
        };
    }
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    if !candidates.iter().any(|k| verify_signature(verify_alg, k, signed, &sig)) {
        return bad("signature does not verify".into());
    }
    let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(&payload) else {
        return bad("payload is not a json object".into());
    };
    KeyLookup::Checked(check_claims(claims, want))
}

fn check_claims(claims: Map<String, Value>, want: &Expected<'_>) -> Result<Map<String, Value>, OidcError> {
    let bad = |m: &str| Err(OidcError::Token(m.into()));
    if claims.get("iss").and_then(Value::as_str) != Some(want.issuer) {
        return bad("wrong issuer");
    }
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !auds.contains(&want.client_id) {
        return bad("wrong audience");
    }
    if auds.len() > 1 && claims.get("azp").and_then(Value::as_str) != Some(want.client_id) {
        return bad("wrong authorized party");
    }
    let Some(exp) = claims.get("exp").and_then(Value::as_i64) else {
        return bad("no expiry");
    };
    if exp + LEEWAY_SECS < want.now {
        return bad("expired");
    }
    if claims
        .get("iat")
        .and_then(Value::as_i64)
        .is_some_and(|iat| iat > want.now + LEEWAY_SECS)
    {
        return bad("issued in the future");
    }
    if claims
        .get("nbf")
        .and_then(Value::as_i64)
        .is_some_and(|nbf| nbf > want.now + LEEWAY_SECS)
    {
        return bad("not valid yet");
    }
    let nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(nonce.as_bytes(), want.nonce.as_bytes())) {
        return bad("wrong nonce");
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(|s| s.is_empty() || s.len() > 255)
    {
        return bad("no subject");
    }
    Ok(claims)
}

#[derive(Clone, Copy)]
enum Alg {
    Rsa(&'static ring::signature::RsaParameters),
    Ec(&'static ring::signature::EcdsaVerificationAlgorithm, &'static str),
    Ed25519,
}

fn algorithm(alg: &str) -> Option<Alg> {
    use ring::signature as s;
    Some(match alg {
        "RS256" => Alg::Rsa(&s::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => Alg::Rsa(&s::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Alg::Rsa(&s::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => Alg::Rsa(&s::RSA_PSS_2048_8192_SHA256),
        "PS384" => Alg::Rsa(&s::RSA_PSS_2048_8192_SHA384),
        "PS512" => Alg::Rsa(&s::RSA_PSS_2048_8192_SHA512),
        "ES256" => Alg::Ec(&s::ECDSA_P256_SHA256_FIXED, "P-256"),
        "ES384" => Alg::Ec(&s::ECDSA_P384_SHA384_FIXED, "P-384"),
        "EdDSA" => Alg::Ed25519,
        _ => return None,
    })
}

fn verify_signature(alg: Alg, k: &Jwk, signed: &[u8], sig: &[u8]) -> bool {
    let b = |v: &Option<String>| v.as_deref().and_then(unb64url);
    match alg {
        Alg::Rsa(params) => {
            let (true, Some(n), Some(e)) = (k.kty == "RSA", b(&k.n), b(&k.e)) else {
                return false;
            };
            ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
                .verify(params, signed, sig)
                .is_ok()
        }
        Alg::Ec(params, crv) => {
            let (true, true, Some(x), Some(y)) = (k.kty == "EC", k.crv.as_deref() == Some(crv), b(&k.x), b(&k.y))
            else {
                return false;
            };
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ring::signature::UnparsedPublicKey::new(params, point)
                .verify(signed, sig)
                .is_ok()
        }
        Alg::Ed25519 => {
            let (true, true, Some(x)) = (k.kty == "OKP", k.crv.as_deref() == Some("Ed25519"), b(&k.x)) else {
                return false;
            };
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
                .verify(signed, sig)
                .is_ok()
        }
    }
}

/// The string values of a claim (a string, or an array of strings).
pub fn claim_strings(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => vec![],
    }
}

// ---- IO glue

struct Cached<T> {
    value: T,
    fetched: Instant,
}

/// Discovery documents and key sets per provider, shared by the requests of one webapp instance (a cache,
/// not state: any instance fetches them again when it lacks them).
#[derive(Default)]
pub struct OidcCache {
    discovery: Mutex<HashMap<String, Cached<Discovery>>>,
    jwks: Mutex<HashMap<String, Cached<Jwks>>>,
    /// When an unknown key id last made a provider's key set be fetched again.
    forced: Mutex<HashMap<String, Instant>>,
}

/// A provider's HTTP client: its CA (if any) besides the machine's roots, rustls with ring, bounded in time.
pub fn http_client(cfg: &OidcConfig) -> Result<reqwest::Client, OidcError> {
    let tls = crate::tls::client_config(cfg.ca_pem.as_deref()).map_err(|e| OidcError::Config(e.to_string()))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| OidcError::Config(e.to_string()))
}

async fn read_json<T: serde::de::DeserializeOwned>(what: &str, res: reqwest::Response) -> Result<T, OidcError> {
    let status = res.status();
    let mut res = res;
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| OidcError::Unreachable(format!("{what}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(OidcError::Protocol(format!("{what}: response too large")));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let detail = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?.as_str()?.to_owned();
                let d = v.get("error_description").and_then(Value::as_str).unwrap_or("");
                Some(format!("{e} {d}").trim().to_owned())
            })
            .unwrap_or_else(|| format!("status {status}"));
        return Err(OidcError::Refused(format!("{what}: {}", truncate(&detail, 200))));
    }
    serde_json::from_slice(&body).map_err(|e| OidcError::Protocol(format!("{what}: {e}")))
}

pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl OidcCache {
    /// Drop what is cached about a provider (its settings changed).
    pub fn forget(&self, provider_id: &str) {
        self.discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(provider_id);
        self.jwks.lock().unwrap_or_else(|e| e.into_inner()).remove(provider_id);
        self.forced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(provider_id);
    }

    pub async fn discovery(&self, provider_id: &str, cfg: &OidcConfig) -> Result<Discovery, OidcError> {
        if let Some(c) = self
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(provider_id)
            && c.fetched.elapsed() < CACHE_TTL
        {
            return Ok(c.value.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", cfg.issuer.trim_end_matches('/'));
        let res = http_client(cfg)?
            .get(&url)
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(format!("discovery: {e}")))?;
        let d: Discovery = read_json("discovery", res).await?;
        if d.issuer != cfg.issuer {
            return Err(OidcError::Protocol(format!(
                "discovery names issuer {:?}, not {:?}",
                truncate(&d.issuer, 200),
                cfg.issuer
            )));
        }
        for (what, u) in [
            ("authorization endpoint", &d.authorization_endpoint),
            ("token endpoint", &d.token_endpoint),
            ("jwks uri", &d.jwks_uri),
        ] {
            let ok =
                url::Url::parse(u).is_ok_and(|u| u.scheme() == "https" || (u.scheme() == "http" && is_loopback(&u)));
            if !ok {
                return Err(OidcError::Protocol(format!("{what} is not an https url")));
            }
        }
        if d.code_challenge_methods_supported
            .as_ref()
            .is_some_and(|m| !m.iter().any(|m| m == "S256"))
        {
            return Err(OidcError::Protocol(
                "the provider does not support PKCE with S256".into(),
            ));
        }
        self.discovery.lock().unwrap_or_else(|e| e.into_inner()).insert(
            provider_id.to_owned(),
            Cached {
                value: d.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(d)
    }

    async fn fetch_jwks(&self, provider_id: &str, cfg: &OidcConfig, d: &Discovery) -> Result<Jwks, OidcError> {
        let res = http_client(cfg)?
            .get(&d.jwks_uri)
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(format!("keys: {e}")))?;
        let jwks: Jwks = read_json("keys", res).await?;
        tracing::info!(provider_id, keys = jwks.keys.len(), "Identity provider keys fetched");
        self.jwks.lock().unwrap_or_else(|e| e.into_inner()).insert(
            provider_id.to_owned(),
            Cached {
                value: jwks.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(jwks)
    }

    /// Check an ID token with the provider's keys, fetching them again once when the token names a key
    /// the cached set does not have (the provider rotated its keys).
    pub async fn verify(
        &self,
        provider_id: &str,
        cfg: &OidcConfig,
        d: &Discovery,
        token: &str,
        want: &Expected<'_>,
    ) -> Result<Map<String, Value>, OidcError> {
        let cached = self
            .jwks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(provider_id)
            .map(|c| (c.value.clone(), c.fetched.elapsed()));
        let (jwks, fresh) = match cached {
            Some((j, age)) if age < CACHE_TTL => (j, false),
            _ => (self.fetch_jwks(provider_id, cfg, d).await?, true),
        };
        let may_refetch = || {
            let mut forced = self.forced.lock().unwrap_or_else(|e| e.into_inner());
            let allowed = forced.get(provider_id).is_none_or(|t| t.elapsed() >= REFETCH_MIN);
            if allowed {
                forced.insert(provider_id.to_owned(), Instant::now());
            }
            allowed
        };
        match verify_id_token(token, &jwks, want) {
            KeyLookup::Checked(r) => r,
            KeyLookup::UnknownKey if !fresh && may_refetch() => {
                let jwks = self.fetch_jwks(provider_id, cfg, d).await?;
                match verify_id_token(token, &jwks, want) {
                    KeyLookup::Checked(r) => r,
                    KeyLookup::UnknownKey => {
                        Err(OidcError::Token("signed by a key the provider does not publish".into()))
                    }
                }
            }
            KeyLookup::UnknownKey => Err(OidcError::Token("signed by a key the provider does not publish".into())),
        }
    }
}

/// The token endpoint's answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
}

/// Exchange the authorization code (with the PKCE verifier) for tokens.
pub async fn exchange_code(
    cfg: &OidcConfig,
    secret: Option<&str>,
    d: &Discovery,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> Result<TokenResponse, OidcError> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ];
    let mut req = http_client(cfg)?.post(&d.token_endpoint);
    let basic = d
        .token_endpoint_auth_methods_supported
        .as_ref()
        .is_none_or(|m| m.iter().any(|m| m == "client_secret_basic"));
    match secret {
        Some(s) if basic => {
            let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(&cfg.client_id), Some(enc(s)));
        }
        Some(s) => {
            form.push(("client_id", &cfg.client_id));
            form.push(("client_secret", s));
        }
        None => form.push(("client_id", &cfg.client_id)),
    }
    let res = req
        .form(&form)
        .send()
        .await
        .map_err(|e| OidcError::Unreachable(format!("token endpoint: {e}")))?;
    read_json("token endpoint", res).await
}

/// The userinfo claims for an access token; their `sub` must be the ID token's.
pub async fn userinfo(
    cfg: &OidcConfig,
    d: &Discovery,
    access_token: &str,
    sub: &str,
) -> Result<Map<String, Value>, OidcError> {
    let Some(endpoint) = &d.userinfo_endpoint else {
        return Ok(Map::new());
    };
    let res = http_client(cfg)?
        .get(endpoint)
        .bearer_auth(access_token)
        .send()
        .await
        .map_err(|e| OidcError::Unreachable(format!("userinfo: {e}")))?;
    let info: Map<String, Value> = read_json("userinfo", res).await?;
    if info.get("sub").and_then(Value::as_str) != Some(sub) {
        return Err(OidcError::Protocol("userinfo is about another subject".into()));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;

    fn sign_ed25519(header: Value, claims: Value, key: &ring::signature::Ed25519KeyPair) -> String {
        let h = b64url(header.to_string().as_bytes());
        let p = b64url(claims.to_string().as_bytes());
        let sig = key.sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", b64url(sig.as_ref()))
    }

    fn key() -> (ring::signature::Ed25519KeyPair, Jwks) {
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let k = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let jwks = Jwks {
            keys: vec![Jwk {
                kty: "OKP".into(),
                kid: Some("k1".into()),
                use_: Some("sig".into()),
                alg: None,
                n: None,
                e: None,
                crv: Some("Ed25519".into()),
                x: Some(b64url(k.public_key().as_ref())),
                y: None,
            }],
        };
        (k, jwks)
    }

    const NOW: i64 = 1_800_000_000;

    fn want() -> Expected<'static> {
        Expected {
            issuer: "https://idp.example",
            client_id: "portico",
            nonce: "n-0123",
            now: NOW,
        }
    }

    fn good_claims() -> Value {
        serde_json::json!({ "iss": "https://idp.example", "aud": "portico", "sub": "u1", "exp": NOW + 300,
            "iat": NOW, "nonce": "n-0123", "groups": ["a", "b"] })
    }

    fn check(token: &str, jwks: &Jwks) -> Result<Map<String, Value>, OidcError> {
        match verify_id_token(token, jwks, &want()) {
            KeyLookup::Checked(r) => r,
            KeyLookup::UnknownKey => Err(OidcError::Token("unknown key".into())),
        }
    }

    #[test]
    fn a_good_token_passes_and_every_claim_is_checked() {
        let (k, jwks) = key();
        let header = serde_json::json!({ "alg": "EdDSA", "kid": "k1" });
        let ok = sign_ed25519(header.clone(), good_claims(), &k);
        let claims = check(&ok, &jwks).unwrap();
        assert_eq!(claim_strings(&claims, "groups"), ["a", "b"]);
        for (field, value, reason) in [
            ("iss", serde_json::json!("https://evil.example"), "wrong issuer"),
            ("aud", serde_json::json!("other-client"), "wrong audience"),
            ("aud", serde_json::json!(["portico", "other"]), "wrong authorized party"),
            ("exp", serde_json::json!(NOW - 61), "expired"),
            ("iat", serde_json::json!(NOW + 3600), "issued in the future"),
            ("nbf", serde_json::json!(NOW + 3600), "not valid yet"),
            ("nonce", serde_json::json!("replayed"), "wrong nonce"),
            ("sub", serde_json::json!(""), "no subject"),
        ] {
            let mut c = good_claims();
            c[field] = value;
            let t = sign_ed25519(header.clone(), c, &k);
            assert_eq!(check(&t, &jwks), Err(OidcError::Token(reason.into())), "{field}");
        }
        let mut c = good_claims();
        c["aud"] = serde_json::json!(["portico", "other"]);
        c["azp"] = serde_json::json!("portico");
        assert!(check(&sign_ed25519(header.clone(), c, &k), &jwks).is_ok());
    }

    #[test]
    fn forged_tokens_are_refused() {
        let (k, jwks) = key();
        let header = serde_json::json!({ "alg": "EdDSA", "kid": "k1" });
        let ok = sign_ed25519(header, good_claims(), &k);
        // A payload changed after signing.
        let mut parts: Vec<String> = ok.split('.').map(str::to_owned).collect();
        let mut c = good_claims();
        c["sub"] = serde_json::json!("admin");
        parts[1] = b64url(c.to_string().as_bytes());
        assert_eq!(
            check(&parts.join("."), &jwks),
            Err(OidcError::Token("signature does not verify".into()))
        );
        // `none` and symmetric algorithms (the key set's public key used as an HMAC secret).
        for alg in ["none", "HS256", ""] {
            let h = b64url(serde_json::json!({ "alg": alg, "kid": "k1" }).to_string().as_bytes());
            let t = format!("{h}.{}.{}", parts[1], "");
            assert!(matches!(check(&t, &jwks), Err(OidcError::Token(m)) if m.contains("not accepted")));
        }
        // Another key pair with the same kid.
        let (other, _) = key();
        let t = sign_ed25519(
            serde_json::json!({ "alg": "EdDSA", "kid": "k1" }),
            good_claims(),
            &other,
        );
        assert!(check(&t, &jwks).is_err());
        // An unknown kid asks for the key set again; garbage is refused.
        let t = sign_ed25519(serde_json::json!({ "alg": "EdDSA", "kid": "k2" }), good_claims(), &k);
        assert_eq!(verify_id_token(&t, &jwks, &want()), KeyLookup::UnknownKey);
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(MAX_TOKEN + 1)] {
            assert!(check(junk, &jwks).is_err(), "{junk:.20}");
        }
    }

    #[test]
    fn pkce_follows_rfc_7636() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (v, c) = pkce_pair();
        assert!(v.len() >= 43 && c == pkce_challenge(&v));
    }

    #[test]
    fn settings_are_checked() {
        let mut cfg = OidcConfig {
            issuer: "https://idp.example".into(),
            client_id: "portico".into(),
            scopes: default_scopes(),
            groups_claim: default_groups_claim(),
            username_claim: default_username_claim(),
            ca_pem: None,
        };
        assert!(cfg.validate().is_ok());
        cfg.issuer = "http://127.0.0.1:9000".into();
        assert!(cfg.validate().is_ok());
        for bad in [
            "http://idp.example",
            "ftp://idp.example",
            "https://idp.example?x=1",
            "idp",
        ] {
            cfg.issuer = bad.into();
            assert!(cfg.validate().is_err(), "{bad}");
        }
    }
}
