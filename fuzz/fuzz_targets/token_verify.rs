//! Session tokens on the bridge. The first byte picks the mode:
//! - 0: the rest is the token as it arrives (any text);
//! - 1: the rest is `now` (8 bytes) then the claims JSON, signed with the trusted key, so the checks after
//!   the signature (claims parsing, time window, audience, session) are fuzzed too;
//! - 2: the rest is edits (position, byte) applied to a valid token: only the untouched token verifies;
//! - 3: the rest is `now`, `nbf`, `exp` (8 bytes each), then flags (other audience, other session): the
//!   time checks at any point of the i64 range.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::fuzz_target;
use portico_proto::token::{Protocol, SessionClaims, TokenSigner, TokenVerifier, key_id};

const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = SigningKey::from_bytes(&[7; 32]);
    let verifier = TokenVerifier::new([key.verifying_key()], "zone:default");
    match mode % 4 {
        0 => {
            let _ = verifier.verify(&String::from_utf8_lossy(rest), NOW, "s1");
        }
        1 => {
            let Some((now, claims)) = rest.split_first_chunk::<8>() else {
                return;
            };
            let header = format!(
                r#"{{"alg":"EdDSA","typ":"JWT","cty":"portico-session+v1","kid":"{}"}}"#,
                key_id(&key.verifying_key())
            );
            let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
            let token = format!("{input}.{}", B64.encode(key.sign(input.as_bytes()).to_bytes()));
            let now = i64::from_be_bytes(*now);
            if let Ok(c) = verifier.verify(&token, now, "s1") {
                assert_eq!((c.aud.as_str(), c.sid.as_str()), ("zone:default", "s1"));
                assert!(c.nbf <= c.exp && c.exp - c.nbf <= 60, "lifetime {}..{}", c.nbf, c.exp);
            }
        }
        3 => {
            let Some((times, flags)) = rest.split_first_chunk::<24>() else {
                return;
            };
            let at = |i: usize| i64::from_be_bytes(times[i * 8..i * 8 + 8].try_into().unwrap());
            let (now, mut c) = (at(0), claims());
            (c.nbf, c.exp) = (at(1), at(2));
            let flags = flags.first().copied().unwrap_or(0);
            if flags & 1 != 0 {
                c.aud = "zone:other".into();
            }
            if flags & 2 != 0 {
                c.sid = "s2".into();
            }
            let res = verifier.verify(&TokenSigner::new(key.clone()).sign(&c), now, "s1");
            let in_window = i128::from(now) <= i128::from(c.exp) + 5
                && i128::from(now) + 5 >= i128::from(c.nbf)
                && (0..=60).contains(&(i128::from(c.exp) - i128::from(c.nbf)));
            assert_eq!(
                res.is_ok(),
                in_window && flags & 3 == 0,
                "now {now} nbf {} exp {}: {res:?}",
                c.nbf,
                c.exp
            );
        }
        _ => {
            let token = TokenSigner::new(key.clone()).sign(&claims());
            let mut bytes = token.clone().into_bytes();
            for edit in rest.chunks_exact(3) {
                let at = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % (bytes.len() + 1);
                match edit[2] {
                    0 if at < bytes.len() => drop(bytes.remove(at)),
                    b => bytes.insert(at, b),
                }
            }
            let edited = String::from_utf8_lossy(&bytes);
            match verifier.verify(&edited, NOW, "s1") {
                Ok(c) => {
                    assert_eq!(edited, token, "an edited token verified");
                    assert_eq!(c, claims());
                }
                Err(e) => assert_ne!(edited, token, "the untouched token was refused: {e}"),
            }
        }
    }
});

fn claims() -> SessionClaims {
    SessionClaims {
        iss: "portico".into(),
        aud: "zone:default".into(),
        sub: "u1".into(),
        sid: "s1".into(),
        jti: "j1".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 60,
        proto: Protocol::Vnc,
        dst_host: "10.0.0.5".into(),
        dst_port: 5900,
        idle_timeout: 0,
        max_duration: 0,
        grace: 60,
        // A viewer's token: an edit that flips its mode must never verify either.
        viewer: Some(portico_proto::token::ViewerClaim {
            id: "v1".into(),
            mode: portico_proto::token::ShareMode::View,
            name: "alice".into(),
            shadow: false,
        }),
    }
}
