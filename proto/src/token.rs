//! Session tokens: compact JWS (EdDSA / Ed25519) minted by the webapp and checked by the bridge.
//!
//! The token says which session may be attached, to which target, on which bridge pool, and until when.
//! It carries no credentials: the bridge fetches those from the webapp when it claims the token.
//! Verification is pure: the caller passes the current time, so every check is unit-testable.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Content type in the header; a token of another type is refused even with a valid signature.
pub const CONTENT_TYPE: &str = "portico-session+v1";
/// Longest accepted lifetime (`exp - nbf`) of a session token, in seconds.
pub const MAX_LIFETIME_SECS: i64 = 60;
/// Clock skew tolerated between webapp and bridge, in seconds.
pub const LEEWAY_SECS: i64 = 5;
/// Longest token accepted at all; bounds the work done on attacker input.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Remote protocol of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Ssh,
    Vnc,
    Rdp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ssh => "ssh",
            Protocol::Vnc => "vnc",
            Protocol::Rdp => "rdp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ssh" => Some(Protocol::Ssh),
            "vnc" => Some(Protocol::Vnc),
            "rdp" => Some(Protocol::Rdp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    cty: String,
    kid: String,
}

/// What a viewer of a shared session may do: watch, or also type and point (and use the clipboard, as the
/// connection allows). The bridge enforces it: a view-only viewer's input never reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareMode {
    View,
    Control,
}

impl ShareMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareMode::View => "view",
            ShareMode::Control => "control",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "view" => Some(ShareMode::View),
            "control" => Some(ShareMode::Control),
            _ => None,
        }
    }
}

/// The viewer part of a token that joins a live session owned by someone else (docs/security.md,
/// "Sharing"): the token names the session as an owner's does, and this says who joins and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewerClaim {
    /// The viewer's id: claimed once, fleet-wide, like the token.
    pub id: String,
    /// The mode at the time the token was minted (the claim returns the current one).
    pub mode: ShareMode,
    /// The viewer's user name, shown to the owner.
    pub name: String,
    /// An administrator joined without an invitation, as the connection's policy allows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// Claims of a session token. All times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Issuer, the webapp deployment name.
    pub iss: String,
    /// Audience: the bridge pool (zone) allowed to accept this token.
    pub aud: String,
    /// User id that owns the session.
    pub sub: String,
    /// Session id; the WebSocket URL must name the same session.
    pub sid: String,
    /// Unique token id; claimed once, fleet-wide, in the database.
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Target protocol, host and port (informational for the bridge; credentials come from the webapp).
    pub proto: Protocol,
    pub dst_host: String,
    pub dst_port: u16,
    /// Idle limit in seconds (no input from the user), 0 = none.
    pub idle_timeout: u32,
    /// Maximum session duration in seconds, 0 = none.
    pub max_duration: u32,
    /// Seconds the bridge keeps a session whose browser dropped, waiting for a reattach.
    pub grace: u32,
    /// Set when the token joins the session as a viewer (its owner shared it); `None` for the owner's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewer: Option<ViewerClaim>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token type not accepted")]
    WrongType,
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lifetime exceeds {MAX_LIFETIME_SECS} s")]
    LifetimeTooLong,
    #[error("token is for another bridge pool")]
    WrongAudience,
    #[error("token is for another session")]
    WrongSession,
}

impl TokenError {
    /// True when the token is authentic but not acceptable here (HTTP 403), false when it is not
    /// authentic or no longer valid (HTTP 401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, TokenError::WrongAudience | TokenError::WrongSession)
    }
}

/// Key id: the first 8 bytes of SHA-256 over the public key, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Mints tokens with the webapp's Ed25519 key.
pub struct TokenSigner {
    key: SigningKey,
    kid: String,
}

impl TokenSigner {
    pub fn new(key: SigningKey) -> Self {
        let kid = key_id(&key.verifying_key());
        Self { key, kid }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn sign(&self, claims: &SessionClaims) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            cty: CONTENT_TYPE.into(),
            kid: self.kid.clone(),
        };
        // INVARIANT: serializing these plain structs cannot fail.
        let header = B64.encode(serde_json::to_vec(&header).expect("header serializes"));
        let claims = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{claims}");
        let sig = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(sig.to_bytes()))
    }
}

/// Checks tokens on the bridge: signature, type, time window, lifetime, audience and session binding.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<(String, VerifyingKey)>,
    audience: String,
}

impl TokenVerifier {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>, audience: impl Into<String>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
            audience: audience.into(),
        }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verify `token` at time `now` (Unix seconds) for the session named in the request.
    pub fn verify(&self, token: &str, now: i64, expected_session: &str) -> Result<SessionClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header: Header =
            serde_json::from_slice(&B64.decode(h).map_err(|_| TokenError::Malformed("header encoding"))?)
                .map_err(|_| TokenError::Malformed("header json"))?;
        if header.alg != "EdDSA" || header.cty != CONTENT_TYPE {
            return Err(TokenError::WrongType);
        }
        let key = self
            .keys
            .iter()
            .find(|(kid, _)| *kid == header.kid)
            .map(|(_, k)| k)
            .ok_or(TokenError::UnknownKey)?;
        let sig_bytes: [u8; 64] = B64
            .decode(s)
            .map_err(|_| TokenError::Malformed("signature encoding"))?
            .try_into()
            .map_err(|_| TokenError::Malformed("signature length"))?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        key.verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&sig_bytes))
            .map_err(|_| TokenError::BadSignature)?;
        // Only authenticated bytes are parsed as claims.
        let claims: SessionClaims =
            serde_json::from_slice(&B64.decode(c).map_err(|_| TokenError::Malformed("claims encoding"))?)
                .map_err(|_| TokenError::Malformed("claims json"))?;
        // Saturating: times at the ends of the i64 range are refused, never overflowed.
        if now > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if now.saturating_add(LEEWAY_SECS) < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        if claims.exp < claims.nbf {
            return Err(TokenError::Malformed("validity ends before it starts"));
        }
        if claims.exp.saturating_sub(claims.nbf) > MAX_LIFETIME_SECS {
            return Err(TokenError::LifetimeTooLong);
        }
        if claims.aud != self.audience {
            return Err(TokenError::WrongAudience);
        }
        if claims.sid != expected_session {
            return Err(TokenError::WrongSession);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> SessionClaims {
        SessionClaims {
            iss: "portico".into(),
            aud: "zone:default".into(),
            sub: "u1".into(),
            sid: "s1".into(),
            jti: "j1".into(),
            iat: now,
            nbf: now,
            exp: now + 60,
            proto: Protocol::Ssh,
            dst_host: "127.0.0.1".into(),
            dst_port: 22,
            idle_timeout: 0,
            max_duration: 0,
            grace: 60,
            viewer: None,
        }
    }

    fn pair() -> (TokenSigner, TokenVerifier) {
        let signer = TokenSigner::new(SigningKey::from_bytes(&[7; 32]));
        let verifier = TokenVerifier::new([signer.verifying_key()], "zone:default");
        (signer, verifier)
    }

    #[test]
    fn round_trip() {
        let (signer, verifier) = pair();
        let token = signer.sign(&claims(1000));
        assert_eq!(verifier.verify(&token, 1010, "s1").unwrap(), claims(1000));
    }

    #[test]
    fn forged_signature_is_refused() {
        let (_, verifier) = pair();
        let forger = TokenSigner::new(SigningKey::from_bytes(&[8; 32]));
        assert_eq!(
            verifier.verify(&forger.sign(&claims(1000)), 1000, "s1"),
            Err(TokenError::UnknownKey)
        );
        // Same kid, other key: the signature check catches it.
        let (signer, verifier) = pair();
        let token = signer.sign(&claims(1000));
        let other = forger.sign(&claims(1000));
        let forged = format!(
            "{}.{}",
            &token[..token.rfind('.').unwrap()],
            &other[other.rfind('.').unwrap() + 1..]
        );
        assert_eq!(verifier.verify(&forged, 1000, "s1"), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_claims_are_refused() {
        let (signer, verifier) = pair();
        let token = signer.sign(&claims(1000));
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims(1000);
        c.dst_host = "10.0.0.1".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(verifier.verify(&tampered, 1000, "s1"), Err(TokenError::BadSignature));
    }

    #[test]
    fn time_window_is_enforced() {
        let (signer, verifier) = pair();
        let token = signer.sign(&claims(1000));
        assert_eq!(
            verifier.verify(&token, 1060 + LEEWAY_SECS + 1, "s1"),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verifier.verify(&token, 1000 - LEEWAY_SECS - 1, "s1"),
            Err(TokenError::NotYetValid)
        );
        let mut long = claims(1000);
        long.exp = 1000 + 3600;
        assert_eq!(
            verifier.verify(&signer.sign(&long), 1000, "s1"),
            Err(TokenError::LifetimeTooLong)
        );
    }

    #[test]
    fn audience_and_session_are_bound() {
        let (signer, verifier) = pair();
        let mut c = claims(1000);
        c.aud = "zone:other".into();
        let err = verifier.verify(&signer.sign(&c), 1000, "s1").unwrap_err();
        assert_eq!(err, TokenError::WrongAudience);
        assert!(err.is_forbidden());
        let err = verifier.verify(&signer.sign(&claims(1000)), 1000, "s2").unwrap_err();
        assert_eq!(err, TokenError::WrongSession);
    }

    #[test]
    fn extreme_times_are_refused_without_overflow() {
        // Signed claims at the ends of the i64 range, and a clock there: a refusal, never an overflow.
        let (signer, verifier) = pair();
        for (nbf, exp, now, want) in [
            (i64::MAX - 10, i64::MAX, i64::MAX, None),
            (i64::MIN, i64::MIN + 10, i64::MIN, None),
            (i64::MIN, i64::MAX, 0, Some(TokenError::LifetimeTooLong)),
            (1000, 1000, i64::MAX, Some(TokenError::Expired)),
            (1000, 1000, i64::MIN, Some(TokenError::NotYetValid)),
        ] {
            let mut c = claims(1000);
            (c.nbf, c.exp) = (nbf, exp);
            let res = verifier.verify(&signer.sign(&c), now, "s1");
            assert_eq!(res.err(), want, "nbf {nbf} exp {exp} now {now}");
        }
        // A window that ends before it starts is refused, even inside the leeway.
        let mut c = claims(1000);
        c.exp = c.nbf - 1;
        assert_eq!(
            verifier.verify(&signer.sign(&c), 1000, "s1"),
            Err(TokenError::Malformed("validity ends before it starts"))
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let (_, verifier) = pair();
        for t in ["", ".", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(
                matches!(verifier.verify(t, 0, "s1"), Err(TokenError::Malformed(_))),
                "{t}"
            );
        }
    }
}
