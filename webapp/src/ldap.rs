//! LDAP / Active Directory logins: bind with the user's own credentials over TLS (LDAPS or StartTLS), read
//! the user's entry, and collect their groups (a group search, and the `memberOf` values AD and OpenLDAP's
//! memberof overlay keep on the entry).
//!
//! The pure parts come first and are tested below: the settings and their validation, RFC 4514 / RFC 4515
//! escaping, the `{placeholder}` templates, the group name of a `memberOf` DN, and the StartTLS exchange
//! (request bytes out, response bytes in). [`authenticate`] is the I/O glue: it opens the TCP connection
//! itself (so "unreachable" is told apart from TLS and protocol failures), runs StartTLS itself, and hands
//! the stream to `ldap3` for the TLS handshake, the bind and the searches. Every step shares one deadline.
//!
//! Security properties: an empty password never reaches a bind (an LDAP "unauthenticated bind" succeeds
//! with any DN); the user name is escaped for where it goes (a DN or a filter) and refused when it holds
//! control characters or is over long; the user filter must match exactly one entry, and that entry must be
//! the one the bind authenticated (the bind DN, or for an AD user principal name the RFC 4532 "Who am I?"
//! answer); certificates are verified against `ca_pem` (or the machine's roots without it) and the URL's
//! host; plain LDAP is refused; the password is never logged nor kept.
//!
//! `ldap3` panics on some malformed messages (in its connection task or while parsing a result): that is
//! caught and becomes [`LdapError::Protocol`], though the panic message still reaches the panic hook.

use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::FutureExt as _;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions, SearchResult, StdStream};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

/// Longest user name accepted, in bytes.
pub const MAX_USERNAME_BYTES: usize = 256;
/// Longest password sent to the directory, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 4096;
/// Most groups read for one user by the group search.
pub const MAX_GROUPS: i32 = 1000;
/// Longest text setting (URL, DN, filter) accepted.
const MAX_SETTING_BYTES: usize = 4096;
/// Largest StartTLS response accepted (the real one is a few dozen bytes).
const MAX_STARTTLS_RESPONSE: usize = 16 * 1024;
/// How long the unbind at the end may take (within the deadline).
const UNBIND_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for the connection task's own error after an operation found the connection gone (it
/// ends a moment later, or later still on a busy machine: a panic's hook runs before its unwinding).
const DRIVER_GRACE: Duration = Duration::from_secs(1);

/// LDAP result codes this module tells apart (RFC 4511, appendix A).
const RC_SUCCESS: u32 = 0;
const RC_SIZE_LIMIT_EXCEEDED: u32 = 4;
const RC_INVALID_CREDENTIALS: u32 = 49;

const MALFORMED: &str = "the ldap client failed on a malformed message";
const CLOSED_BEFORE_STARTTLS: &str = "the directory closed the connection before answering starttls";

/// The StartTLS extended operation (RFC 4511 §4.14).
const STARTTLS_OID: &str = "1.3.6.1.4.1.1466.20037";

/// An LDAP directory's settings (stored as JSON in the database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct LdapConfig {
    /// `ldaps://host:636`, or `ldap://host:389` with `starttls`; plain LDAP without TLS is refused.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS (required for `ldap://`, refused for `ldaps://`).
    #[serde(default)]
    pub starttls: bool,
    /// PEM certificate(s) of the CA(s) to trust, and only those; without it, the machine's trusted roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// The DN (or AD user principal name) to bind as: `uid={username},ou=people,dc=example,dc=org`, or
    /// `{username}@corp.example`. The user name is DN-escaped (RFC 4514).
    pub bind_dn: String,
    /// Where the user's own entry is searched (subtree) after the bind.
    pub user_base: String,
    /// Finds the user's entry; `{username}` is filter-escaped (RFC 4515). AD: `(sAMAccountName={username})`.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// The attribute holding the directory's spelling of the user name (AD: `sAMAccountName`).
    #[serde(default = "default_username_attribute")]
    pub username_attribute: String,
    /// The attribute holding the user's display name.
    #[serde(default = "default_display_name_attribute")]
    pub display_name_attribute: String,
    /// If set, groups are searched here (subtree) with `group_filter`, as the user.
    #[serde(default)]
    pub group_base: Option<String>,
    /// Finds the user's groups: `{dn}` is the user's DN and `{username}` the directory's spelling of the
    /// user name, both filter-escaped. For posixGroup: `(memberUid={username})`.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// The attribute holding a group's name in the group search.
    #[serde(default = "default_group_name_attribute")]
    pub group_name_attribute: String,
}

fn default_user_filter() -> String {
    "(uid={username})".into()
}

fn default_username_attribute() -> String {
    "uid".into()
}

fn default_display_name_attribute() -> String {
    "displayName".into()
}

fn default_group_filter() -> String {
    "(member={dn})".into()
}

fn default_group_name_attribute() -> String {
    "cn".into()
}

/// A user the directory authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectoryUser {
    /// The DN of the user's entry, as the directory spells it.
    pub dn: String,
    /// The directory's spelling of the user name (`username_attribute`; the typed name if the entry has none).
    pub username: String,
    pub display_name: Option<String>,
    /// Group names from the group search and from `memberOf`, sorted, without duplicates (ignoring case).
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("invalid ldap settings: {0}")]
    Config(String),
    #[error("cannot reach the directory at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("tls with the directory at {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("the directory at {addr} did not answer within {timeout:?} ({stage})")]
    Timeout {
        addr: String,
        stage: &'static str,
        timeout: Duration,
    },
    #[error("the directory at {addr} broke the ldap protocol: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("the directory refused the {operation}: {message} (result code {code})")]
    Refused {
        operation: &'static str,
        code: u32,
        message: String,
    },
    #[error("the user filter matched more than one entry")]
    AmbiguousUser,
    /// The entry the user filter found is not the one the bind authenticated (`bind_dn` and `user_filter`
    /// disagree, e.g. an AD user principal name that belongs to another account than the sAMAccountName).
    #[error("the user filter found {found}, not the user who bound ({bound}): check bind_dn and user_filter")]
    WrongEntry { bound: String, found: String },
}

fn config_err(msg: impl Into<String>) -> LdapError {
    LdapError::Config(msg.into())
}

/// How to reach the directory: always TLS, either from the first byte or after StartTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    starttls: bool,
}

impl Target {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl LdapConfig {
    /// Check the settings without contacting the directory.
    pub fn validate(&self) -> Result<(), LdapError> {
        self.target()?;
        for (name, value) in [
            ("bind_dn", &self.bind_dn),
            ("user_base", &self.user_base),
            ("user_filter", &self.user_filter),
            ("group_filter", &self.group_filter),
        ] {
            check_text(name, value)?;
        }
        if let Some(base) = &self.group_base {
            check_text("group_base", base)?;
        }
        check_template("bind_dn", &self.bind_dn, &["username"])?;
        check_template("user_filter", &self.user_filter, &["username"])?;
        check_filter("user_filter", &self.user_filter, &["username"])?;
        check_template("group_filter", &self.group_filter, &["dn", "username"])?;
        check_filter("group_filter", &self.group_filter, &["dn", "username"])?;
        for (name, value) in [
            ("username_attribute", &self.username_attribute),
            ("display_name_attribute", &self.display_name_attribute),
            ("group_name_attribute", &self.group_name_attribute),
        ] {
            if !is_attribute_name(value) {
                return Err(config_err(format!("{name} is not an attribute name: {value:?}")));
            }
        }
        if let Some(pem) = &self.ca_pem {
            parse_ca_pem(pem)?;
        }
        Ok(())
    }

    fn target(&self) -> Result<Target, LdapError> {
        check_text("url", &self.url)?;
        let url = url::Url::parse(&self.url).map_err(|e| config_err(format!("url: {e}")))?;
        let (default_port, starttls) = match (url.scheme(), self.starttls) {
            ("ldaps", false) => (636, false),
            ("ldaps", true) => return Err(config_err("starttls is for ldap:// urls; ldaps:// is tls already")),
            ("ldap", true) => (389, true),
            ("ldap", false) => {
                return Err(config_err(
                    "plain ldap without tls is refused: use ldaps:// or set starttls",
                ));
            }
            (other, _) => return Err(config_err(format!("url scheme {other:?}: use ldaps:// or ldap://"))),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(_)) => {
                return Err(config_err("ipv6 address literals are not supported: use a host name"));
            }
            _ => return Err(config_err("url without a host")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(config_err("url with credentials: put the bind dn in bind_dn"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(config_err(
                "url with a path, query or fragment: give only scheme, host and port",
            ));
        }
        let port = url.port().unwrap_or(default_port);
        if port == 0 {
            return Err(config_err("url port 0"));
        }
        Ok(Target { host, port, starttls })
    }
}

fn check_text(name: &str, value: &str) -> Result<(), LdapError> {
    if value.trim().is_empty() {
        return Err(config_err(format!("{name} is empty")));
    }
    if value.len() > MAX_SETTING_BYTES {
        return Err(config_err(format!("{name} is longer than {MAX_SETTING_BYTES} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(config_err(format!("{name} contains a control character")));
    }
    Ok(())
}

/// `template` uses only `allowed` placeholders, and at least one of them.
fn check_template(name: &str, template: &str, allowed: &[&str]) -> Result<(), LdapError> {
    let values: Vec<(&str, &str)> = allowed.iter().map(|a| (*a, "")).collect();
    let expanded = expand(template, &values).map_err(|e| config_err(format!("{name}: {e}")))?;
    if expanded == template {
        let names: Vec<String> = allowed.iter().map(|a| format!("{{{a}}}")).collect();
        return Err(config_err(format!("{name} must contain {}", names.join(" or "))));
    }
    Ok(())
}

/// `filter` is a valid RFC 4515 filter once its placeholders are filled.
fn check_filter(name: &str, filter: &str, placeholders: &[&str]) -> Result<(), LdapError> {
    let values: Vec<(&str, &str)> = placeholders.iter().map(|p| (*p, "x")).collect();
    let sample = expand(filter, &values).map_err(|e| config_err(format!("{name}: {e}")))?;
    if !sample.starts_with('(') || ldap3::parse_filter(&sample).is_err() {
        return Err(config_err(format!("{name} is not a valid ldap filter: {filter:?}")));
    }
    Ok(())
}

/// An attribute description: a name (`displayName`, `sAMAccountName`) or a numeric OID.
fn is_attribute_name(s: &str) -> bool {
    let name = s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !s.is_empty()
        && s.len() <= 128
        && s.split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()));
    name || oid
}

/// The certificates of a PEM bundle; at least one.
fn parse_ca_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, LdapError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_err(format!("ca_pem: {e}")))?;
    if certs.is_empty() {
        return Err(config_err("ca_pem holds no certificate"));
    }
    Ok(certs)
}

/// The machine's trusted roots, read once.
static NATIVE_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "Could not read some of the machine's trusted certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "Loaded the machine's trusted certificates for LDAP");
    Arc::new(roots)
});

/// rustls with the ring provider, trusting `ca_pem` only, or the machine's roots without it.
fn tls_config(cfg: &LdapConfig) -> Result<Arc<rustls::ClientConfig>, LdapError> {
    let roots = match &cfg.ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_ca_pem(pem)? {
                roots
                    .add(cert)
                    .map_err(|e| config_err(format!("ca_pem: invalid certificate: {e}")))?;
            }
            Arc::new(roots)
        }
        None => NATIVE_ROOTS.clone(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why a user name is refused before anything is sent.
pub fn check_username(username: &str) -> Result<(), &'static str> {
    if username.is_empty() {
        return Err("empty");
    }
    if username.len() > MAX_USERNAME_BYTES {
        return Err("too long");
    }
    if username.chars().any(char::is_control) {
        return Err("control character");
    }
    if username.trim() != username {
        return Err("leading or trailing white space");
    }
    Ok(())
}

/// Escape an attribute value for a DN string (RFC 4514 §2.4): the special characters, a leading space
/// or `#`, a trailing space, NUL and other control characters.
pub fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c if c.is_control() => push_hex_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

/// Escape a value for a search filter (RFC 4515 §3): `*`, `(`, `)`, `\` and NUL (and, for the log's
/// sake, other control characters) become `\XX`.
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '*' | '(' | ')' | '\\' => push_hex_escaped(&mut out, c),
            c if c.is_control() => push_hex_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

fn push_hex_escaped(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        let _ = write!(out, "\\{b:02x}");
    }
}

/// Fill `{name}` placeholders from `values` (already escaped for where they go). A placeholder that is
/// not in `values`, or a `{` without its `}`, is an error; `}` alone is kept as is.
fn expand(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("unclosed {{ in {template:?}"))?;
        let name = &after[..close];
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("unknown placeholder {{{name}}}"))?;
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A character of a DN string: as written, or escaped with `\\` (RFC 4514 §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DnByte {
    Plain(u8),
    Escaped(u8),
}

impl DnByte {
    fn byte(self) -> u8 {
        match self {
            DnByte::Plain(b) | DnByte::Escaped(b) => b,
        }
    }
}

/// One attribute type and value of an RDN, escapes decoded; a hex (`#…`) value is kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ava {
    attr: String,
    value: String,
    hex: bool,
}

/// Parse a DN string (RFC 4514) into its RDNs, each a list of attribute values. `None` if it is not one.
fn parse_dn(dn: &str) -> Option<Vec<Vec<Ava>>> {
    let b = dn.as_bytes();
    let mut units = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            units.push(DnByte::Plain(b[i]));
            i += 1;
            continue;
        }
        let first = *b.get(i + 1)?;
        if first.is_ascii_hexdigit() {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            units.push(DnByte::Escaped(u8::from_str_radix(hex, 16).ok()?));
            i += 3;
        } else {
            units.push(DnByte::Escaped(first));
            i += 2;
        }
    }
    fn trim(mut u: &[DnByte]) -> &[DnByte] {
        while let [DnByte::Plain(b' '), rest @ ..] = u {
            u = rest;
        }
        while let [rest @ .., DnByte::Plain(b' ')] = u {
            u = rest;
        }
        u
    }
    let text = |u: &[DnByte]| String::from_utf8(u.iter().map(|d| d.byte()).collect()).ok();
    if trim(&units).is_empty() {
        return Some(Vec::new());
    }
    let mut rdns = Vec::new();
    for rdn in units.split(|u| matches!(u, DnByte::Plain(b',' | b';'))) {
        let mut avas = Vec::new();
        for ava in rdn.split(|u| *u == DnByte::Plain(b'+')) {
            let eq = ava.iter().position(|u| *u == DnByte::Plain(b'='))?;
            let attr = text(trim(&ava[..eq]))?;
            if attr.is_empty()
                || !attr
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
            {
                return None;
            }
            let value = trim(&ava[eq + 1..]);
            avas.push(Ava {
                attr,
                hex: value.first() == Some(&DnByte::Plain(b'#')),
                value: text(value)?,
            });
        }
        rdns.push(avas);
    }
    Some(rdns)
}

/// Whether two DNs name the same entry, ignoring case, escaping style, spaces around separators and the
/// order of the values of a multi-valued RDN (the attributes of user DNs compare without case).
fn same_dn(a: &str, b: &str) -> bool {
    let norm = |dn: &str| {
        parse_dn(dn).map(|rdns| {
            rdns.into_iter()
                .map(|rdn| {
                    let mut avas: Vec<(String, String)> = rdn
                        .into_iter()
                        .map(|a| (a.attr.to_ascii_lowercase(), a.value.to_lowercase()))
                        .collect();
                    avas.sort();
                    avas
                })
                .collect::<Vec<_>>()
        })
    };
    match (norm(a), norm(b)) {
        (Some(a), Some(b)) => !a.is_empty() && a == b,
        _ => false,
    }
}

/// Whether `bind` (the expanded `bind_dn`) is a DN, rather than an AD user principal name or
/// `DOMAIN\user`.
fn is_dn(bind: &str) -> bool {
    parse_dn(bind).is_some_and(|rdns| !rdns.is_empty())
}

/// Whether an RFC 4532 authorization identity names the entry `dn` whose user names are `names`: `dn:…`
/// compares DNs; `u:…` (Active Directory says `u:DOMAIN\user`) compares the name without its domain.
fn authz_is(authz: &str, dn: &str, names: &[String]) -> bool {
    if let Some(authz_dn) = authz.strip_prefix("dn:") {
        return same_dn(authz_dn, dn);
    }
    let Some(user) = authz.strip_prefix("u:") else {
        return false;
    };
    let user = user.rsplit('\\').next().unwrap_or(user);
    !user.is_empty() && names.iter().any(|n| n.to_lowercase() == user.to_lowercase())
}

/// The value of the first RDN of `dn` if its attribute is `cn` (`CN=Help Desk,OU=Groups,DC=corp` →
/// `Help Desk`), with RFC 4514 escapes decoded; `None` for another attribute, a hex (`#…`) value or an
/// invalid DN.
pub fn group_name_of_dn(dn: &str) -> Option<String> {
    let rdns = parse_dn(dn)?;
    let ava = rdns
        .first()?
        .iter()
        .find(|a| a.attr.eq_ignore_ascii_case("cn") || a.attr == "2.5.4.3")?;
    (!ava.hex && !ava.value.is_empty()).then(|| ava.value.clone())
}

/// The StartTLS extended request, message ID 1 (RFC 4511 §4.12, §4.14): BER bytes.
fn starttls_request() -> Vec<u8> {
    let oid = STARTTLS_OID.as_bytes();
    let mut op = vec![0x80, oid.len() as u8];
    op.extend_from_slice(oid);
    let mut body = vec![0x02, 0x01, 0x01, 0x77, op.len() as u8];
    body.extend_from_slice(&op);
    let mut msg = vec![0x30, body.len() as u8];
    msg.extend_from_slice(&body);
    msg
}

/// The outcome of an LDAP operation as the directory reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    message_id: u32,
    code: u32,
    message: String,
}

/// A BER element: its tag byte, its content, and its total length (header included).
type Element<'a> = (u8, &'a [u8], usize);

/// One BER element at the start of `buf`; `Ok(None)` while incomplete. Only the forms LDAP allows
/// (RFC 4511 §5.1): one-byte tags, definite lengths.
fn ber_element(buf: &[u8], max_len: usize) -> Result<Option<Element<'_>>, String> {
    let (Some(&tag), Some(&first)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if tag & 0x1f == 0x1f {
        return Err(format!("unexpected multi-byte tag {tag:#04x}"));
    }
    let (len, header) = match first {
        0x00..=0x7f => (usize::from(first), 2),
        0x80 => return Err("indefinite length".into()),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let Some(bytes) = buf.get(2..2 + n) else {
                return Ok(None);
            };
            let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        }
        _ => return Err(format!("length of {} bytes", first & 0x7f)),
    };
    if len > max_len {
        return Err(format!("a message of {len} bytes (at most {max_len} expected)"));
    }
    match buf.get(header..header + len) {
        Some(content) => Ok(Some((tag, content, header + len))),
        None => Ok(None),
    }
}

/// A whole element that must be inside `buf` (a part of an already complete message).
fn ber_part<'a>(buf: &'a [u8], want: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    match ber_element(buf, buf.len())? {
        Some((tag, content, used)) if tag == want => Ok((content, &buf[used..])),
        Some((tag, _, _)) => Err(format!("{what}: tag {tag:#04x} where {want:#04x} was expected")),
        None => Err(format!("{what}: truncated")),
    }
}

fn ber_uint(content: &[u8], what: &str) -> Result<u32, String> {
    if content.is_empty() || content.len() > 4 || content[0] & 0x80 != 0 {
        return Err(format!("{what}: invalid integer"));
    }
    Ok(content.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Parse the answer to [`starttls_request`]: an ExtendedResponse (RFC 4511 §4.12). `Ok(None)` while more
/// bytes are needed; the answer must be all of `buf` (the server speaks no further before the handshake).
fn parse_starttls_response(buf: &[u8]) -> Result<Option<Reply>, String> {
    // Told at the first byte, so garbage is an error at once rather than a wait for a made-up length.
    if let Some(&tag) = buf.first()
        && tag != 0x30
    {
        return Err(format!("not an ldap message (first byte {tag:#04x})"));
    }
    let Some((tag, msg, used)) = ber_element(buf, MAX_STARTTLS_RESPONSE)? else {
        if buf.len() > MAX_STARTTLS_RESPONSE {
            return Err("oversized answer".into());
        }
        return Ok(None);
    };
    debug_assert_eq!(tag, 0x30);
    if used != buf.len() {
        return Err("bytes after the starttls answer".into());
    }
    let (id, rest) = ber_part(msg, 0x02, "message id")?;
    let message_id = ber_uint(id, "message id")?;
    let (op, _controls) = ber_part(rest, 0x78, "extended response")?;
    let (code, rest) = ber_part(op, 0x0a, "result code")?;
    let code = ber_uint(code, "result code")?;
    let (_matched, rest) = ber_part(rest, 0x04, "matched dn")?;
    let (diagnostic, _) = ber_part(rest, 0x04, "diagnostic message")?;
    Ok(Some(Reply {
        message_id,
        code,
        message: String::from_utf8_lossy(diagnostic).into_owned(),
    }))
}

/// Bind as the user and read their entry and groups. `Ok(None)`: wrong user name or password (the
/// directory said invalidCredentials, or no entry matched the user filter), or a user name or password
/// that cannot be right (empty, too long, control characters), refused before any connection.
/// Everything (connect, TLS, StartTLS, each operation) shares one deadline, `timeout` from now.
pub async fn authenticate(
    cfg: &LdapConfig,
    username: &str,
    password: &str,
    timeout: Duration,
) -> Result<Option<DirectoryUser>, LdapError> {
    cfg.validate()?;
    let target = cfg.target()?;
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        tracing::debug!(url = %cfg.url, username, "LDAP login refused before the bind: empty or oversized password");
        return Ok(None);
    }
    if let Err(reason) = check_username(username) {
        tracing::debug!(url = %cfg.url, reason, "LDAP login refused before the bind: invalid user name");
        return Ok(None);
    }
    let tls = tls_config(cfg)?;
    let session = Session {
        addr: target.addr(),
        deadline: Instant::now() + timeout,
        timeout,
    };
    let result = session.run(&target, tls, cfg, username, password).await;
    // Debug only: the caller reports failures with its own context.
    match &result {
        Ok(Some(user)) => {
            tracing::debug!(addr = %session.addr, username, dn = %user.dn, groups = user.groups.len(), "LDAP login")
        }
        Ok(None) => tracing::debug!(addr = %session.addr, username, "LDAP login refused: wrong user name or password"),
        Err(e) => tracing::debug!(addr = %session.addr, username, error = %e, "LDAP login failed"),
    }
    result
}

/// One conversation with the directory: its address (for messages) and its deadline.
struct Session {
    addr: String,
    deadline: Instant,
    timeout: Duration,
}

impl Session {
    /// Connect, converse, and close: unbind unless the deadline passed, then end the connection task.
    async fn run(
        &self,
        target: &Target,
        tls: Arc<rustls::ClientConfig>,
        cfg: &LdapConfig,
        username: &str,
        password: &str,
    ) -> Result<Option<DirectoryUser>, LdapError> {
        let (conn, mut ldap) = self.connect(target, tls).await?;
        let mut driver = tokio::spawn(conn.drive());
        // ldap3 panics on some malformed messages (in this task or in the connection task): an error here.
        let mut result = AssertUnwindSafe(self.conversation(&mut ldap, cfg, username, password))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(self.protocol(MALFORMED)));
        if let Err(LdapError::Protocol { reason, .. }) = &mut result {
            // The connection task ends with the connection, a moment after the operation saw it go; it
            // knows better why.
            let until = (Instant::now() + DRIVER_GRACE).min(self.deadline);
            match tokio::time::timeout_at(until, &mut driver).await {
                Ok(Ok(Err(e))) => *reason = format!("{reason} ({})", describe_ldap3(&e)),
                Ok(Err(e)) if e.is_panic() => *reason = MALFORMED.into(),
                _ => {}
            }
        }
        if !matches!(result, Err(LdapError::Timeout { .. })) && !driver.is_finished() {
            let until = (Instant::now() + UNBIND_GRACE).min(self.deadline);
            if let Ok(Err(e)) = tokio::time::timeout_at(until, ldap.unbind()).await {
                tracing::debug!(addr = %self.addr, error = %e, "LDAP unbind failed");
            }
        }
        driver.abort();
        result
    }

    fn timed_out(&self, stage: &'static str) -> LdapError {
        LdapError::Timeout {
            addr: self.addr.clone(),
            stage,
            timeout: self.timeout,
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> LdapError {
        LdapError::Protocol {
            addr: self.addr.clone(),
            reason: reason.into(),
        }
    }

    fn tls(&self, reason: impl Into<String>) -> LdapError {
        LdapError::Tls {
            addr: self.addr.clone(),
            reason: reason.into(),
        }
    }

    /// Run `fut` before the deadline.
    async fn bounded<T>(&self, stage: &'static str, fut: impl Future<Output = T>) -> Result<T, LdapError> {
        tokio::time::timeout_at(self.deadline, fut)
            .await
            .map_err(|_| self.timed_out(stage))
    }

    /// An ldap3 operation before the deadline; its failures are protocol failures.
    async fn op<T>(
        &self,
        stage: &'static str,
        fut: impl Future<Output = Result<T, ldap3::LdapError>>,
    ) -> Result<T, LdapError> {
        self.bounded(stage, fut)
            .await?
            .map_err(|e| self.protocol(format!("{stage}: {}", describe_ldap3(&e))))
    }

    /// TCP, StartTLS if asked, then ldap3 over TLS on that stream.
    async fn connect(
        &self,
        target: &Target,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<(LdapConnAsync, ldap3::Ldap), LdapError> {
        let mut tcp = self
            .bounded(
                "connect",
                tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
            )
            .await?
            .map_err(|e| LdapError::Unreachable {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        if target.starttls {
            self.starttls(&mut tcp).await?;
        }
        let std = tcp.into_std().map_err(|e| self.protocol(format!("socket: {e}")))?;
        let settings = LdapConnSettings::new()
            .set_config(tls)
            .set_std_stream(StdStream::Tcp(std));
        // Always "ldaps" for ldap3: after our StartTLS the stream is ready for the handshake.
        let url = format!("ldaps://{}:{}", target.host, target.port);
        self.bounded("tls handshake", LdapConnAsync::with_settings(settings, &url))
            .await?
            .map_err(|e| self.tls(describe_tls(&e)))
    }

    fn starttls_io(&self, e: &std::io::Error) -> LdapError {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        if matches!(
            e.kind(),
            BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof
        ) {
            self.protocol(CLOSED_BEFORE_STARTTLS)
        } else {
            self.protocol(format!("starttls: {e}"))
        }
    }

    /// The StartTLS exchange on the plain stream, before ldap3 takes it over for the handshake.
    async fn starttls(&self, tcp: &mut tokio::net::TcpStream) -> Result<(), LdapError> {
        self.bounded("starttls", tcp.write_all(&starttls_request()))
            .await?
            .map_err(|e| self.starttls_io(&e))?;
        let mut buf = Vec::with_capacity(64);
        let mut chunk = [0u8; 1024];
        let reply = loop {
            let n = self
                .bounded("starttls", tcp.read(&mut chunk))
                .await?
                .map_err(|e| self.starttls_io(&e))?;
            if n == 0 {
                return Err(self.protocol(CLOSED_BEFORE_STARTTLS));
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_starttls_response(&buf) {
                Ok(Some(reply)) => break reply,
                Ok(None) => continue,
                Err(e) => return Err(self.protocol(format!("starttls answer: {e}"))),
            }
        };
        if reply.message_id == 0 {
            return Err(LdapError::Refused {
                operation: "starttls",
                code: reply.code,
                message: format!("the directory disconnected: {}", reply.message),
            });
        }
        if reply.message_id != 1 {
            return Err(self.protocol(format!("starttls answer for message {} instead of 1", reply.message_id)));
        }
        if reply.code != RC_SUCCESS {
            return Err(LdapError::Refused {
                operation: "starttls",
                code: reply.code,
                message: reply.message,
            });
        }
        Ok(())
    }

    /// Bind, find the user's entry, read the groups.
    async fn conversation(
        &self,
        ldap: &mut ldap3::Ldap,
        cfg: &LdapConfig,
        username: &str,
        password: &str,
    ) -> Result<Option<DirectoryUser>, LdapError> {
        let bind_dn = expand(&cfg.bind_dn, &[("username", &escape_dn_value(username))]).map_err(config_err)?;
        let bound = self.op("bind", ldap.simple_bind(&bind_dn, password)).await?;
        match bound.rc {
            RC_SUCCESS => {}
            RC_INVALID_CREDENTIALS => return Ok(None),
            code => {
                return Err(LdapError::Refused {
                    operation: "bind",
                    code,
                    message: result_text(&bound),
                });
            }
        }

        let filter = expand(&cfg.user_filter, &[("username", &escape_filter_value(username))]).map_err(config_err)?;
        let attrs = [
            cfg.username_attribute.as_str(),
            cfg.display_name_attribute.as_str(),
            "memberOf",
            "sAMAccountName",
            "userPrincipalName",
        ];
        ldap.with_search_options(SearchOptions::new().sizelimit(2).timelimit(self.seconds_left()));
        let SearchResult(found, done) = self
            .op(
                "user search",
                ldap.search(&cfg.user_base, Scope::Subtree, &filter, attrs),
            )
            .await?;
        let mut entries: Vec<SearchEntry> = found
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect();
        match done.rc {
            RC_SUCCESS if entries.len() <= 1 => {}
            RC_SUCCESS | RC_SIZE_LIMIT_EXCEEDED => return Err(LdapError::AmbiguousUser),
            code => {
                return Err(LdapError::Refused {
                    operation: "user search",
                    code,
                    message: result_text(&done),
                });
            }
        }
        let Some(entry) = entries.pop() else {
            tracing::warn!(addr = %self.addr, username, filter, base = %cfg.user_base,
                "LDAP bind succeeded but no entry matched the user filter (check user_base, user_filter and the directory's access rules)");
            return Ok(None);
        };

        let values = |attr: &str| -> Vec<String> {
            entry
                .attrs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(attr))
                .flat_map(|(_, v)| v.iter().cloned())
                .collect()
        };
        // The entry must be the user who bound: the bind DN itself, or (for an AD user principal name or
        // DOMAIN\\user bind) whoever the directory says is bound (RFC 4532 "Who am I?").
        let bound = if is_dn(&bind_dn) {
            bind_dn.clone()
        } else {
            self.who_am_i(ldap).await?
        };
        let mut known_names = values(&cfg.username_attribute);
        known_names.extend(values("sAMAccountName"));
        known_names.extend(values("userPrincipalName"));
        let same = if is_dn(&bind_dn) {
            same_dn(&bind_dn, &entry.dn)
        } else {
            authz_is(&bound, &entry.dn, &known_names)
        };
        if !same {
            return Err(LdapError::WrongEntry {
                bound,
                found: entry.dn.clone(),
            });
        }

        let names = values(&cfg.username_attribute);
        let directory_username = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(username))
            .or(names.first())
            .cloned()
            .unwrap_or_else(|| username.to_owned());
        let display_name = values(&cfg.display_name_attribute).into_iter().next();
        let mut groups: Vec<String> = values("memberOf")
            .iter()
            .filter_map(|dn| group_name_of_dn(dn))
            .collect();

        if let Some(base) = &cfg.group_base {
            let filter = expand(
                &cfg.group_filter,
                &[
                    ("dn", &escape_filter_value(&entry.dn)),
                    ("username", &escape_filter_value(&directory_username)),
                ],
            )
            .map_err(config_err)?;
            ldap.with_search_options(
                SearchOptions::new()
                    .sizelimit(MAX_GROUPS)
                    .timelimit(self.seconds_left()),
            );
            let SearchResult(found, done) = self
                .op(
                    "group search",
                    ldap.search(base, Scope::Subtree, &filter, [cfg.group_name_attribute.as_str()]),
                )
                .await?;
            if done.rc != RC_SUCCESS {
                return Err(LdapError::Refused {
                    operation: "group search",
                    code: done.rc,
                    message: result_text(&done),
                });
            }
            for group in found
                .into_iter()
                .filter(|e| !e.is_ref() && !e.is_intermediate())
                .map(SearchEntry::construct)
            {
                let name = group
                    .attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&cfg.group_name_attribute))
                    .and_then(|(_, v)| v.first().cloned());
                match name {
                    Some(name) => groups.push(name),
                    None => tracing::debug!(group = %group.dn, "LDAP group without a readable name attribute"),
                }
            }
        }

        Ok(Some(DirectoryUser {
            dn: entry.dn,
            username: directory_username,
            display_name,
            groups: normalize_groups(groups),
        }))
    }

    /// The authorization identity of the connection (RFC 4532), e.g. `u:CORP\\alice` or `dn:uid=alice,…`.
    async fn who_am_i(&self, ldap: &mut ldap3::Ldap) -> Result<String, LdapError> {
        let ldap3::result::ExopResult(exop, done) = self.op("who am i", ldap.extended(ldap3::exop::WhoAmI)).await?;
        if done.rc != RC_SUCCESS {
            return Err(LdapError::Refused {
                operation: "who am i",
                code: done.rc,
                message: format!(
                    "{} (a bind_dn that is not a dn needs the directory's who am i operation)",
                    result_text(&done)
                ),
            });
        }
        Ok(exop
            .val
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default())
    }

    /// Whole seconds before the deadline, at least 1 (a server-side time limit for searches).
    fn seconds_left(&self) -> i32 {
        let left = self.deadline.saturating_duration_since(Instant::now()).as_secs();
        i32::try_from(left.max(1)).unwrap_or(i32::MAX)
    }
}

/// Sorted, without duplicates that differ only in case (the first spelling seen wins).
fn normalize_groups(groups: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&g)) {
            out.push(g);
        }
    }
    out.sort_by_key(|g| g.to_lowercase());
    out
}

fn result_text(r: &ldap3::LdapResult) -> String {
    if r.text.is_empty() {
        "no message".into()
    } else {
        r.text.clone()
    }
}

/// An ldap3 error in words for our messages.
fn describe_ldap3(e: &ldap3::LdapError) -> String {
    match e {
        ldap3::LdapError::OpSend { .. } | ldap3::LdapError::ResultRecv { .. } => {
            "the connection to the directory ended".into()
        }
        ldap3::LdapError::Io { source } if source.to_string() == "decoding error" => {
            "the directory sent a message that is not valid ldap".into()
        }
        ldap3::LdapError::Io { source } => source.to_string(),
        other => other.to_string(),
    }
}

/// A failed TLS handshake in words: the rustls error when there is one.
fn describe_tls(e: &ldap3::LdapError) -> String {
    let io = match e {
        ldap3::LdapError::Rustls { source } => return describe_rustls(source),
        ldap3::LdapError::Io { source } => source,
        other => return other.to_string(),
    };
    if let Some(tls) = io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return describe_rustls(tls);
    }
    match io.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            "the directory closed the connection during the handshake".into()
        }
        _ => io.to_string(),
    }
}

fn describe_rustls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            "the directory's certificate is not signed by a trusted ca (check ca_pem)".into()
        }
        rustls::Error::InvalidCertificate(c) => format!("the directory's certificate is invalid: {c}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LdapConfig {
        serde_json::from_value(serde_json::json!({
            "url": "ldaps://ldap.example.org",
            "bind_dn": "uid={username},ou=people,dc=example,dc=org",
            "user_base": "ou=people,dc=example,dc=org",
        }))
        .expect("minimal settings")
    }

    #[test]
    fn defaults_and_json_names() {
        let c = cfg();
        assert_eq!(c.user_filter, "(uid={username})");
        assert_eq!(c.group_filter, "(member={dn})");
        assert_eq!(c.username_attribute, "uid");
        assert_eq!(c.display_name_attribute, "displayName");
        assert_eq!(c.group_name_attribute, "cn");
        assert!(!c.starttls && c.ca_pem.is_none() && c.group_base.is_none());
        c.validate().expect("valid");
        let round: LdapConfig = serde_json::from_value(serde_json::to_value(&c).expect("json")).expect("back");
        assert_eq!(round, c);
        let unknown = serde_json::json!({
            "url": "ldaps://h", "bind_dn": "{username}", "user_base": "dc=x", "no_tls_verify": true,
        });
        assert!(serde_json::from_value::<LdapConfig>(unknown).is_err());
    }

    #[test]
    fn urls() {
        let with = |url: &str, starttls: bool| LdapConfig {
            url: url.into(),
            starttls,
            ..cfg()
        };
        let t = with("ldaps://ldap.example.org", false).target().expect("ldaps");
        assert_eq!((t.host.as_str(), t.port, t.starttls), ("ldap.example.org", 636, false));
        let t = with("ldap://10.0.0.5", true).target().expect("starttls");
        assert_eq!((t.host.as_str(), t.port, t.starttls), ("10.0.0.5", 389, true));
        assert_eq!(with("ldaps://h:1636/", false).target().expect("port").port, 1636);
        for (url, starttls) in [
            ("ldap://ldap.example.org", false),
            ("ldaps://ldap.example.org", true),
            ("http://ldap.example.org", false),
            ("ldapi:///run/slapd.sock", false),
            ("ldaps://[::1]:636", false),
            ("ldaps://user:pw@h", false),
            ("ldaps://h/dc=example?uid", false),
            ("ldaps://h:0", false),
            ("not a url", false),
            ("", false),
        ] {
            let e = with(url, starttls).validate().expect_err(url);
            assert!(matches!(e, LdapError::Config(_)), "{url}: {e}");
        }
        let e = with("ldap://h", false).validate().expect_err("plain");
        assert_eq!(
            e.to_string(),
            "invalid ldap settings: plain ldap without tls is refused: use ldaps:// or set starttls"
        );
    }

    #[test]
    fn templates_and_filters_are_checked() {
        let bad = [
            LdapConfig {
                bind_dn: "cn=fixed,dc=x".into(),
                ..cfg()
            },
            LdapConfig {
                bind_dn: "uid={user},dc=x".into(),
                ..cfg()
            },
            LdapConfig {
                bind_dn: "uid={username,dc=x".into(),
                ..cfg()
            },
            LdapConfig {
                user_filter: "(uid=alice)".into(),
                ..cfg()
            },
            LdapConfig {
                user_filter: "uid={username}".into(),
                ..cfg()
            },
            LdapConfig {
                user_filter: "(&(uid={username})".into(),
                ..cfg()
            },
            LdapConfig {
                group_filter: "(member={dn}".into(),
                ..cfg()
            },
            LdapConfig {
                user_base: " ".into(),
                ..cfg()
            },
            LdapConfig {
                group_base: Some(String::new()),
                ..cfg()
            },
            LdapConfig {
                username_attribute: "uid)(x".into(),
                ..cfg()
            },
            LdapConfig {
                ca_pem: Some("not a certificate".into()),
                ..cfg()
            },
            LdapConfig {
                bind_dn: "uid={username},\ndc=x".into(),
                ..cfg()
            },
        ];
        for c in bad {
            assert!(matches!(c.validate(), Err(LdapError::Config(_))), "{c:?}");
        }
        let good = [
            LdapConfig {
                bind_dn: "{username}@corp.example".into(),
                user_filter: "(&(objectClass=user)(sAMAccountName={username}))".into(),
                username_attribute: "sAMAccountName".into(),
                ..cfg()
            },
            LdapConfig {
                group_base: Some("ou=groups,dc=example,dc=org".into()),
                group_filter: "(&(objectClass=posixGroup)(memberUid={username}))".into(),
                ..cfg()
            },
            LdapConfig {
                bind_dn: r"CORP\{username}".into(),
                group_name_attribute: "2.5.4.3".into(),
                ..cfg()
            },
        ];
        for c in good {
            c.validate().unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
    }

    #[test]
    fn expand_fills_only_known_placeholders() {
        assert_eq!(expand("uid={u},o=x", &[("u", "a")]).as_deref(), Ok("uid=a,o=x"));
        assert_eq!(expand("{a}{b}}", &[("a", "1"), ("b", "2")]).as_deref(), Ok("12}"));
        assert!(expand("{c}", &[("a", "1")]).is_err());
        assert!(expand("x{a", &[("a", "1")]).is_err());
        // A value is never expanded again.
        assert_eq!(expand("{a}", &[("a", "{a}")]).as_deref(), Ok("{a}"));
    }

    #[test]
    fn dn_escaping_follows_rfc_4514() {
        assert_eq!(escape_dn_value("alice"), "alice");
        assert_eq!(escape_dn_value("o'brien, jr"), r"o'brien\, jr");
        assert_eq!(escape_dn_value(r#"a+b;c<d>e"f\g=h"#), r#"a\+b\;c\<d\>e\"f\\g\=h"#);
        assert_eq!(escape_dn_value(" #lead trail "), r"\ #lead trail\ ");
        assert_eq!(escape_dn_value("#x#"), r"\#x#");
        assert_eq!(escape_dn_value(" "), r"\ ");
        assert_eq!(escape_dn_value("a\0b"), r"a\00b");
        assert_eq!(escape_dn_value("é"), "é");
        // An injected RDN stays one value.
        assert_eq!(
            escape_dn_value("x,ou=admins,dc=example,dc=org"),
            r"x\,ou\=admins\,dc\=example\,dc\=org"
        );
    }

    #[test]
    fn filter_escaping_follows_rfc_4515() {
        assert_eq!(escape_filter_value("alice"), "alice");
        assert_eq!(escape_filter_value("*"), r"\2a");
        assert_eq!(escape_filter_value("a)(uid=*"), r"a\29\28uid=\2a");
        assert_eq!(escape_filter_value(r"*)(|(uid=*"), r"\2a\29\28|\28uid=\2a");
        assert_eq!(escape_filter_value(r"a\b"), r"a\5cb");
        assert_eq!(escape_filter_value("a\0b"), r"a\00b");
        assert_eq!(escape_filter_value("o'brien, jr"), "o'brien, jr");
        assert_eq!(escape_filter_value("日本"), "日本");
        // The escaped value parses as one equality filter, whatever it held.
        for hostile in ["*", "a)(uid=*", "*)(|(uid=*", r"\", "(", ")(&)"] {
            let f = format!("(uid={})", escape_filter_value(hostile));
            assert!(ldap3::parse_filter(&f).is_ok(), "{f}");
            let unescaped = format!("(uid={hostile})");
            assert_ne!(f, unescaped);
        }
        // A DN with filter-special characters, as {dn} in the group filter.
        assert_eq!(
            escape_filter_value(r"uid=o'brien\, jr (ops),ou=people"),
            r"uid=o'brien\5c, jr \28ops\29,ou=people"
        );
    }

    #[test]
    fn user_names_that_cannot_be_right() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("o'brien, jr").is_ok());
        assert!(check_username(&"a".repeat(MAX_USERNAME_BYTES)).is_ok());
        assert_eq!(check_username(""), Err("empty"));
        assert_eq!(check_username(&"a".repeat(MAX_USERNAME_BYTES + 1)), Err("too long"));
        assert_eq!(check_username(&"é".repeat(129)), Err("too long"));
        for c in ["a\0b", "a\nb", "a\rb", "\tab", "a\u{7f}", "a\u{85}b"] {
            assert_eq!(check_username(c), Err("control character"), "{c:?}");
        }
        assert_eq!(check_username(" alice"), Err("leading or trailing white space"));
        assert_eq!(check_username("alice "), Err("leading or trailing white space"));
    }

    #[tokio::test]
    async fn empty_password_is_refused_before_any_connection() {
        // Nothing listens on port 9 here: a connection attempt would be an error, not `None`.
        let c = LdapConfig {
            url: "ldaps://127.0.0.1:9".into(),
            ..cfg()
        };
        let started = std::time::Instant::now();
        assert_eq!(
            authenticate(&c, "alice", "", Duration::from_secs(5)).await.ok(),
            Some(None)
        );
        assert_eq!(
            authenticate(&c, "alice\n", "pw", Duration::from_secs(5)).await.ok(),
            Some(None)
        );
        assert_eq!(
            authenticate(&c, &"a".repeat(300), "pw", Duration::from_secs(5))
                .await
                .ok(),
            Some(None)
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn invalid_settings_fail_before_any_connection() {
        let c = LdapConfig {
            url: "ldap://127.0.0.1:9".into(),
            ..cfg()
        };
        let e = authenticate(&c, "alice", "pw", Duration::from_secs(5))
            .await
            .expect_err("plain ldap");
        assert!(matches!(e, LdapError::Config(_)), "{e}");
    }

    #[test]
    fn group_names_from_member_of() {
        assert_eq!(
            group_name_of_dn("CN=Help Desk,OU=Groups,DC=corp,DC=example").as_deref(),
            Some("Help Desk")
        );
        assert_eq!(
            group_name_of_dn("cn=helpdesk,ou=groups,dc=portico,dc=test").as_deref(),
            Some("helpdesk")
        );
        assert_eq!(
            group_name_of_dn(r"cn=R\26D\, Paris,ou=g,dc=x").as_deref(),
            Some("R&D, Paris")
        );
        assert_eq!(group_name_of_dn(r"CN=caf\C3\A9 ,DC=x").as_deref(), Some("café"));
        assert_eq!(group_name_of_dn(r"CN=trail\ ,DC=x").as_deref(), Some("trail "));
        assert_eq!(group_name_of_dn("2.5.4.3=oid,dc=x").as_deref(), Some("oid"));
        assert_eq!(group_name_of_dn("cn=only").as_deref(), Some("only"));
        assert_eq!(group_name_of_dn("cn=a+ou=b,dc=x").as_deref(), Some("a"));
        assert_eq!(group_name_of_dn("ou=groups,dc=x"), None);
        assert_eq!(group_name_of_dn("cn=#04024869,dc=x"), None);
        assert_eq!(group_name_of_dn("cn=,dc=x"), None);
        // Lenient with an escaped character that needed no escape.
        assert_eq!(group_name_of_dn(r"cn=bad\zz").as_deref(), Some("badzz"));
        assert_eq!(group_name_of_dn(r"cn=bad\"), None);
        assert_eq!(group_name_of_dn(r"cn=\ff\fe"), None);
        assert_eq!(group_name_of_dn("no equals sign"), None);
    }

    #[test]
    fn dns_compare_by_meaning() {
        let people = "uid=alice,ou=people,dc=portico,dc=test";
        assert!(same_dn(people, "UID=Alice, OU=People, DC=portico, DC=test"));
        assert!(same_dn(r"uid=o'brien\, jr (ops),ou=p", r"uid=o'brien\2C jr (ops),ou=p"));
        assert!(same_dn("cn=a+sn=b,dc=x", "sn=B+cn=A,dc=x"));
        assert!(same_dn("cn=x;dc=y", "cn=x,dc=y"));
        assert!(!same_dn(
            people,
            "uid=alice,ou=contractors,ou=people,dc=portico,dc=test"
        ));
        assert!(!same_dn(people, "uid=alice2,ou=people,dc=portico,dc=test"));
        assert!(!same_dn(r"uid=a\,b,dc=x", "uid=a,b=,dc=x"));
        assert!(!same_dn("", ""));
        assert!(!same_dn("not a dn", "not a dn"));
        assert!(is_dn(people) && is_dn("CN=Alice Liddell,OU=Users,DC=corp,DC=example"));
        assert!(!is_dn("alice@corp.example") && !is_dn(r"CORP\alice") && !is_dn(""));
    }

    #[test]
    fn who_am_i_answers() {
        let dn = "CN=Alice Liddell,OU=Users,DC=corp,DC=example";
        let names = ["alice".to_owned(), "alice@corp.example".to_owned()];
        assert!(authz_is(r"u:CORP\alice", dn, &names));
        assert!(authz_is(r"u:CORP\ALICE", dn, &names));
        assert!(authz_is("u:alice", dn, &names));
        assert!(authz_is("dn:cn=alice liddell,ou=users,dc=corp,dc=example", dn, &names));
        assert!(!authz_is(r"u:CORP\asmith", dn, &names));
        assert!(!authz_is("dn:CN=Someone Else,OU=Users,DC=corp,DC=example", dn, &names));
        assert!(!authz_is("", dn, &names));
        assert!(!authz_is("u:", dn, &names));
        assert!(!authz_is(r"u:CORP\", dn, &names));
        assert!(!authz_is("alice", dn, &names));
    }

    #[test]
    fn groups_are_sorted_without_case_duplicates() {
        let g = normalize_groups(vec![
            "vpn".into(),
            "Helpdesk".into(),
            "helpdesk".into(),
            "admins".into(),
        ]);
        assert_eq!(g, ["admins", "Helpdesk", "vpn"]);
    }

    #[test]
    fn starttls_request_bytes() {
        let mut want = vec![0x30, 0x1d, 0x02, 0x01, 0x01, 0x77, 0x18, 0x80, 0x16];
        want.extend_from_slice(b"1.3.6.1.4.1.1466.20037");
        assert_eq!(starttls_request(), want);
    }

    fn reply(id: u8, code: u8, diag: &[u8]) -> Vec<u8> {
        let mut op = vec![0x0a, 0x01, code, 0x04, 0x00, 0x04, diag.len() as u8];
        op.extend_from_slice(diag);
        let mut body = vec![0x02, 0x01, id, 0x78, op.len() as u8];
        body.extend_from_slice(&op);
        let mut msg = vec![0x30, body.len() as u8];
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn starttls_answers() {
        let ok = reply(1, 0, b"");
        for cut in 0..ok.len() {
            assert_eq!(parse_starttls_response(&ok[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        assert_eq!(
            parse_starttls_response(&ok),
            Ok(Some(Reply {
                message_id: 1,
                code: 0,
                message: String::new()
            }))
        );
        let refused = parse_starttls_response(&reply(1, 2, b"unsupported")).expect("parses");
        assert_eq!(refused.map(|r| (r.code, r.message)), Some((2, "unsupported".into())));
        // Long-form lengths, and the response name after the result.
        let mut long = vec![
            0x30, 0x81, 0x2a, 0x02, 0x01, 0x01, 0x78, 0x82, 0x00, 0x24, 0x0a, 0x01, 0x00, 0x04, 0x00,
        ];
        long.extend_from_slice(&[0x04, 0x00, 0x8a, 0x16]);
        long.extend_from_slice(b"1.3.6.1.4.1.1466.20037");
        long[2] = (long.len() - 3) as u8;
        long[9] = (long.len() - 10) as u8;
        assert_eq!(parse_starttls_response(&long).map(|r| r.map(|r| r.code)), Ok(Some(0)));
    }

    #[test]
    fn starttls_lies_are_errors() {
        let mut trailing = reply(1, 0, b"");
        trailing.push(0x16);
        for bad in [
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
            vec![0x30, 0x00],
            vec![0x30, 0x80, 0x00, 0x00],
            vec![0x30, 0x85, 1, 2, 3, 4, 5],
            vec![0x30, 0x84, 0x7f, 0xff, 0xff, 0xff],
            vec![0x30, 0x03, 0x02, 0x01, 0x01],
            vec![0x30, 0x05, 0x02, 0x01, 0x01, 0x61, 0x00],
            vec![0x30, 0x05, 0x02, 0x00, 0x78, 0x00, 0x00],
            vec![0x30, 0x07, 0x02, 0x01, 0x01, 0x78, 0x02, 0x0a, 0x05],
            vec![0x1f, 0x01, 0x00],
            trailing,
        ] {
            assert!(parse_starttls_response(&bad).is_err(), "{bad:02x?}");
        }
        // A claimed length past the limit is an error at once, not a wait for more bytes.
        let mut huge = vec![0x30, 0x83, 0x10, 0x00, 0x00];
        huge.extend_from_slice(&[0; 8]);
        assert!(parse_starttls_response(&huge).is_err());
    }
}
