//! Key derivation, credential encryption at rest (AES-256-GCM), password hashing (argon2id), random ids.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context as _, anyhow};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
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
    /// Seals device cookies (a browser that once logged in as a user), separate from credentials.
    devices: Aes256Gcm,
}

impl Keys {
    pub fn derive(master: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"portico/v1"), master);
        let mut signing = [0u8; 32];
        let mut enc = [0u8; 32];
        let mut devices = [0u8; 32];
        // INVARIANT: 32 bytes is a valid HKDF-SHA256 output length.
        hk.expand(b"token-signing", &mut signing).expect("hkdf length");
        hk.expand(b"credential-encryption", &mut enc).expect("hkdf length");
        hk.expand(b"device-cookie", &mut devices).expect("hkdf length");
        Self {
            token_signing: SigningKey::from_bytes(&signing),
            credentials: Aes256Gcm::new(&enc.into()),
            devices: Aes256Gcm::new(&devices.into()),
        }
    }

    /// Encrypt a credential; the associated data binds it to its row and field.
    pub fn seal(&self, plaintext: &str, aad: &str) -> anyhow::Result<String> {
        seal_with(&self.credentials, plaintext, aad)
    }

    pub fn open(&self, sealed: &str, aad: &str) -> anyhow::Result<String> {
        open_with(&self.credentials, sealed, aad)
    }

    /// A device cookie for `user_id`: sealed (so unforgeable) and random (so each browser has its own).
    pub fn device_cookie(&self, user_id: &str) -> anyhow::Result<String> {
        seal_with(&self.devices, &format!("{}:{user_id}", random_token()), "device")
    }

    /// The (device id, user id) of a device cookie this master key sealed; `None` for anything else.
    pub fn open_device_cookie(&self, cookie: &str) -> Option<(String, String)> {
        let plain = open_with(&self.devices, cookie, "device").ok()?;
        let (device, user) = plain.split_once(':')?;
        Some((device.to_owned(), user.to_owned()))
    }
}

fn seal_with(cipher: &Aes256Gcm, plaintext: &str, aad: &str) -> anyhow::Result<String> {
    let nonce_bytes: [u8; 12] = random_bytes();
    let ct = cipher
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

fn open_with(cipher: &Aes256Gcm, sealed: &str, aad: &str) -> anyhow::Result<String> {
    let raw = sealed.strip_prefix("v1:").context("unknown credential format")?;
    let raw = STANDARD.decode(raw).context("credential encoding")?;
    anyhow::ensure!(raw.len() > 12, "credential too short");
    let (nonce, ct) = raw.split_at(12);
    let pt = cipher
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

thread_local! {
    /// Argon2's working memory (19 MiB), kept by each thread that verifies passwords: allocating it anew
    /// for every check spread freed 19 MiB blocks over many malloc arenas, and RSS grew by the arena.
    static ARGON2_BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(h) = PasswordHash::new(hash) else { return false };
    let (Ok(params), Ok(algorithm)) = (Params::try_from(&h), Algorithm::try_from(h.algorithm)) else {
        return false;
    };
    let Ok(version) = h.version.map(Version::try_from).transpose() else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks_needed = params.block_count();
    let argon = Argon2::new(algorithm, version.unwrap_or_default(), params);
    let mut out = vec![0u8; expected.len()];
    let computed = ARGON2_BLOCKS.with_borrow_mut(|blocks| {
        blocks.resize(blocks_needed, argon2::Block::default());
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..])
            .is_ok()
    });
    computed && bool::from(subtle::ConstantTimeEq::ct_eq(out.as_slice(), expected.as_bytes()))
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
    fn device_cookies_are_sealed_and_unique() {
        let keys = Keys::derive(&[1; 32]);
        let (a, b) = (keys.device_cookie("u1").unwrap(), keys.device_cookie("u1").unwrap());
        let (da, ua) = keys.open_device_cookie(&a).unwrap();
        assert_eq!(
            (ua.as_str(), da == keys.open_device_cookie(&b).unwrap().0),
            ("u1", false)
        );
        assert!(keys.open_device_cookie(&format!("{a}x")).is_none(), "tampered");
        assert!(
            Keys::derive(&[2; 32]).open_device_cookie(&a).is_none(),
            "other master key"
        );
        let sealed_credential = keys.seal("d:u1", "device").unwrap();
        assert!(
            keys.open_device_cookie(&sealed_credential).is_none(),
            "credential key is not the device key"
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
