//! Key derivation, credential encryption at rest (AES-256-GCM), password hashing (argon2id), random ids.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context as _, anyhow};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use hkdf::Hkdf;
use sha2::{Digest as _, Sha256};

/// Keys derived from the master key. Every webapp instance with the same master key derives the same keys.
pub struct Keys {
    pub token_signing: SigningKey,
    credentials: Aes256Gcm,
}

impl Keys {
    pub fn derive(master: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"portico/v1"), master);
        let mut signing = [0u8; 32];
        let mut enc = [0u8; 32];
        // INVARIANT: 32 bytes is a valid HKDF-SHA256 output length.
        hk.expand(b"token-signing", &mut signing).expect("hkdf length");
        hk.expand(b"credential-encryption", &mut enc).expect("hkdf length");
        Self {
            token_signing: SigningKey::from_bytes(&signing),
            credentials: Aes256Gcm::new(&enc.into()),
        }
    }

    /// Encrypt a credential; the associated data binds it to its row and field.
    pub fn seal(&self, plaintext: &str, aad: &str) -> anyhow::Result<String> {
        let nonce_bytes: [u8; 12] = random_bytes();
        let ct = self
            .credentials
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                aes_gcm::aead::Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("credential encryption failed"))?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("v1:{}", STANDARD.encode(out)))
    }

    pub fn open(&self, sealed: &str, aad: &str) -> anyhow::Result<String> {
        let raw = sealed.strip_prefix("v1:").context("unknown credential format")?;
        let raw = STANDARD.decode(raw).context("credential encoding")?;
        anyhow::ensure!(raw.len() > 12, "credential too short");
        let (nonce, ct) = raw.split_at(12);
        let pt = self
            .credentials
            .decrypt(
                Nonce::from_slice(nonce),
                aes_gcm::aead::Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("credential decryption failed (wrong master key?)"))?;
        String::from_utf8(pt).context("credential is not utf-8")
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // INVARIANT: the OS RNG is available on every supported platform; failing here must stop the process.
    getrandom::fill(&mut b).expect("os random number generator");
    b
}

/// A random URL-safe token with 256 bits of entropy.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

pub fn sha256_hex(data: &str) -> String {
    hex::encode(Sha256::digest(data.as_bytes()))
}

fn argon2() -> Argon2<'static> {
    // OWASP minimum for argon2id: m=19 MiB, t=2, p=1.
    // INVARIANT: constant, valid parameters.
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).expect("argon2 params"),
    )
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| anyhow!("salt: {e}"))?;
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow!("hash password: {e}"))?
        .to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to compare against when the user does not exist, so that timing does not reveal user names.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("portico-dummy-password").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let keys = Keys::derive(&[1; 32]);
        let sealed = keys.seal("s3cret", "conn:1:password").unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(keys.open(&sealed, "conn:1:password").unwrap(), "s3cret");
        assert!(keys.open(&sealed, "conn:2:password").is_err(), "aad binds the row");
        assert!(
            Keys::derive(&[2; 32]).open(&sealed, "conn:1:password").is_err(),
            "other master key"
        );
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }
}
