//! LDAP logins (`portico_webapp::ldap::authenticate`) against a real OpenLDAP slapd over LDAPS and StartTLS:
//! the right password gives the user's entry and groups (group search, `memberOf`, posixGroup); a wrong
//! password, an unknown user, an empty password and filter or DN injection give nothing; a filter that
//! matches two entries or another entry than the one bound, a CA that is not the server's, a certificate for another name, plain LDAP, a closed
//! port, a silent server and servers that lie (in clear and inside TLS) give clear errors within the timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_tests::slapd::{self, BASE, DUPLICATE_UID, Slapd, USERS};
use portico_webapp::ldap::{DirectoryUser, LdapConfig, LdapError, authenticate};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The timeout for servers that never answer, and how much later than it the error may come.
const SHORT: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(3);

fn config(slapd: &Slapd, starttls: bool) -> LdapConfig {
    serde_json::from_value(slapd.settings(starttls)).expect("the harness's settings are valid")
}

async fn login(cfg: &LdapConfig, username: &str, password: &str) -> Result<Option<DirectoryUser>, LdapError> {
    authenticate(cfg, username, password, TIMEOUT).await
}

/// A DN with its escapes decoded, to compare DNs that spell a character differently (slapd answers `\2C`
/// for the `\,` it was given).
fn unescaped(dn: &str) -> String {
    let mut out = Vec::new();
    let b = dn.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'\\', None) if i + 1 < b.len() => {
                out.push(b[i + 1]);
                i += 2;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn right_password_over_ldaps_and_starttls_gives_the_entry_and_groups() -> anyhow::Result<()> {
    let slapd = Slapd::start()?;
    for starttls in [false, true] {
        let cfg = config(&slapd, starttls);
        for u in USERS {
            let who = login(&cfg, u.uid, u.password)
                .await?
                .unwrap_or_else(|| panic!("{} (starttls {starttls}) refused; log:\n{}", u.uid, slapd.log()));
            assert_eq!(
                unescaped(&who.dn),
                unescaped(&slapd::user_dn(u.uid)),
                "starttls {starttls}"
            );
            assert_eq!(who.username, u.uid);
            assert_eq!(who.display_name.as_deref(), Some(u.display_name));
            let mut want = strings(u.groups);
            want.sort();
            assert_eq!(who.groups, want, "{} (starttls {starttls})", u.uid);
        }
    }
    // The directory's spelling of the name, whatever the case typed.
    let cfg = config(&slapd, false);
    let who = login(&cfg, "ALICE", Slapd::password("alice")).await?.expect("ALICE");
    assert_eq!(who.username, "alice");
    // "localhost" is in the certificate too.
    let by_name = LdapConfig {
        url: format!("ldaps://localhost:{}", slapd.ldaps_port),
        ..cfg.clone()
    };
    assert!(login(&by_name, "bob", Slapd::password("bob")).await?.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_from_member_of_and_from_posix_groups() -> anyhow::Result<()> {
    let slapd = Slapd::start()?;
    // Active Directory style: no group search, the names come from the CN of each memberOf value.
    let member_of = LdapConfig {
        group_base: None,
        ..config(&slapd, false)
    };
    let who = login(&member_of, "alice", Slapd::password("alice"))
        .await?
        .expect("alice");
    assert_eq!(who.groups, ["helpdesk", "vpn"]);
    let who = login(&member_of, "o'brien, jr (ops)", Slapd::password("o'brien, jr (ops)"))
        .await?
        .expect("o'brien");
    assert_eq!(who.groups, ["helpdesk"]);
    // posixGroup: memberUid holds the user name, not the DN.
    let posix = LdapConfig {
        group_base: Some(format!("ou=posixgroups,{BASE}")),
        group_filter: "(&(objectClass=posixGroup)(memberUid={username}))".into(),
        ..config(&slapd, true)
    };
    let who = login(&posix, "bob", Slapd::password("bob")).await?.expect("bob");
    assert_eq!(who.groups, ["developers"]);
    let who = login(&posix, "alice", Slapd::password("alice")).await?.expect("alice");
    assert_eq!(
        who.groups,
        ["developers", "helpdesk", "vpn"],
        "posix group and memberOf"
    );
    let who = login(&posix, "carol", Slapd::password("carol")).await?.expect("carol");
    assert_eq!(who.groups, ["admins", "vpn"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_unknown_user_and_injection_give_nothing() -> anyhow::Result<()> {
    let slapd = Slapd::start()?;
    let alice_pw = Slapd::password("alice");
    for starttls in [false, true] {
        let cfg = config(&slapd, starttls);
        assert!(login(&cfg, "alice", "wrong-password").await?.is_none());
        assert!(login(&cfg, "alice", Slapd::password("bob")).await?.is_none());
        assert!(login(&cfg, "nobody", alice_pw).await?.is_none());
        // Names that would match alice (or anyone) if they reached the filter or the DN unescaped.
        for name in [
            "*",
            "alice)(uid=*",
            "*)(|(uid=*",
            "al*",
            "alice*",
            "alice,ou=people",
            "alice,ou=people,dc=portico,dc=test",
            r"alice\2a",
            "alice\0",
            "alice\n",
            " alice",
        ] {
            let got = login(&cfg, name, alice_pw).await;
            assert!(matches!(got, Ok(None)), "{name:?} (starttls {starttls}): {got:?}");
        }
    }
    // A name with `*` that binds for real: the user filter must match that entry only, not "starfish" too
    // (unescaped, `(uid=star*)` would match both and the login would fail as ambiguous).
    let cfg = config(&slapd, false);
    let who = login(&cfg, "star*", Slapd::password("star*")).await?.expect("star*");
    assert_eq!(
        (who.dn.as_str(), who.username.as_str()),
        (slapd::user_dn("star*").as_str(), "star*")
    );
    assert!(login(&cfg, "star*", Slapd::password("starfish")).await?.is_none());
    assert!(login(&cfg, "star", Slapd::password("starfish")).await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_password_is_refused_without_a_connection() -> anyhow::Result<()> {
    let slapd = Slapd::start()?;
    let cfg = config(&slapd, false);
    // slapd answers an unauthenticated bind (a DN, no password) with unwillingToPerform, other servers
    // with success: either way, the client must not send it.
    let unbinds = || slapd.log().matches(" UNBIND").count();
    // The harness's readiness search has ended with its own unbind first.
    portico_tests::peers::wait_for("the readiness search's unbind", Duration::from_secs(5), || {
        unbinds() > 0
    })?;
    let before = slapd.connections();
    let unbinds_before = unbinds();
    for name in ["alice", "bob", "*"] {
        assert!(matches!(login(&cfg, name, "").await, Ok(None)), "{name}");
    }
    assert_eq!(slapd.connections(), before, "no connection for an empty password");
    // The same client does connect for a non-empty one.
    assert!(login(&cfg, "alice", Slapd::password("alice")).await?.is_some());
    assert_eq!(slapd.connections(), before + 1);
    // And ends it with an unbind.
    portico_tests::peers::wait_for("slapd to log the unbind", Duration::from_secs(5), || {
        unbinds() > unbinds_before
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_user_filter_must_find_exactly_the_user_who_bound() -> anyhow::Result<()> {
    let slapd = Slapd::start()?;
    let cfg = config(&slapd, false);
    let dup_pw = Slapd::password(DUPLICATE_UID);
    let got = login(&cfg, DUPLICATE_UID, dup_pw).await;
    assert!(matches!(got, Err(LdapError::AmbiguousUser)), "{got:?}");
    // Narrowed to one base, the same user is found.
    let contractors = LdapConfig {
        user_base: format!("ou=contractors,ou=people,{BASE}"),
        bind_dn: format!("uid={{username}},ou=contractors,ou=people,{BASE}"),
        ..cfg.clone()
    };
    let who = login(&contractors, DUPLICATE_UID, dup_pw).await?.expect("dup");
    assert_eq!(who.dn, format!("uid=dup,ou=contractors,ou=people,{BASE}"));
    // Bound as one entry, found another: an error, never the other user.
    let elsewhere = LdapConfig {
        user_base: format!("ou=contractors,ou=people,{BASE}"),
        ..cfg.clone()
    };
    let got = login(&elsewhere, DUPLICATE_UID, dup_pw).await;
    assert!(matches!(got, Err(LdapError::WrongEntry { .. })), "{got:?}");
    let always_alice = LdapConfig {
        user_filter: "(&(uid=alice)(|(uid={username})(objectClass=*)))".into(),
        ..cfg
    };
    let e = login(&always_alice, "bob", Slapd::password("bob"))
        .await
        .expect_err("bob is not alice");
    assert!(matches!(e, LdapError::WrongEntry { .. }), "{e}");
    assert!(e.to_string().contains("not the user who bound"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_verified() -> anyhow::Result<()> {
    let slapd = Slapd::start()?;
    let other_ca = slapd::unrelated_ca_pem()?;
    for starttls in [false, true] {
        let cfg = LdapConfig {
            ca_pem: Some(other_ca.clone()),
            ..config(&slapd, starttls)
        };
        let e = login(&cfg, "alice", Slapd::password("alice"))
            .await
            .expect_err("a ca that is not the server's");
        assert!(matches!(e, LdapError::Tls { .. }), "{e}");
        assert!(e.to_string().contains("not signed by a trusted ca"), "{e}");
    }
    // Without ca_pem, the machine's roots: they do not know the test CA either.
    let cfg = LdapConfig {
        ca_pem: None,
        ..config(&slapd, false)
    };
    let e = login(&cfg, "alice", Slapd::password("alice"))
        .await
        .expect_err("machine roots");
    assert!(matches!(e, LdapError::Tls { .. }), "{e}");

    // The right CA but another name: the server's certificate is for 127.0.0.1 and localhost only.
    let port = tls_liar(&slapd, "127.0.0.2", Lie::Silent).await?;
    let cfg = LdapConfig {
        url: format!("ldaps://127.0.0.2:{port}"),
        ..config(&slapd, false)
    };
    let e = login(&cfg, "alice", Slapd::password("alice"))
        .await
        .expect_err("wrong name");
    assert!(matches!(e, LdapError::Tls { .. }), "{e}");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_ldap_and_unreachable_directories() -> anyhow::Result<()> {
    let plain: LdapConfig = serde_json::from_value(serde_json::json!({
        "url": "ldap://127.0.0.1:389",
        "bind_dn": "uid={username},ou=people,dc=portico,dc=test",
        "user_base": "ou=people,dc=portico,dc=test",
    }))?;
    let e = login(&plain, "alice", "pw").await.expect_err("plain ldap");
    assert!(matches!(e, LdapError::Config(_)), "{e}");
    assert!(e.to_string().contains("plain ldap without tls is refused"), "{e}");

    // A closed loopback port: refused at once, said so.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    for starttls in [false, true] {
        let scheme = if starttls { "ldap" } else { "ldaps" };
        let cfg = LdapConfig {
            url: format!("{scheme}://127.0.0.1:{closed}"),
            starttls,
            ..plain.clone()
        };
        let started = Instant::now();
        let e = authenticate(&cfg, "alice", "pw", SHORT).await.expect_err("closed port");
        assert!(started.elapsed() < SHORT + SLACK);
        assert!(matches!(e, LdapError::Unreachable { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("cannot reach the directory at 127.0.0.1:{closed}")),
            "{e}"
        );
    }
    Ok(())
}

/// What a fake server does with each connection.
#[derive(Clone)]
enum Lie {
    /// Accept and never answer.
    Silent,
    /// Close at once.
    Close,
    /// Send these bytes at once, then read until the client goes.
    Garbage(&'static [u8]),
    /// Read the client's first message, answer these bytes, then read until the client goes.
    Answer(Vec<u8>),
}

async fn act(mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, lie: Lie) {
    let mut buf = [0u8; 4096];
    match lie {
        Lie::Close => return,
        Lie::Silent => {}
        Lie::Garbage(bytes) => {
            let _ = s.write_all(bytes).await;
        }
        Lie::Answer(bytes) => {
            if s.read(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            let _ = s.write_all(&bytes).await;
        }
    }
    let _ = s.flush().await;
    // Bounded: the test ends long before.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while s.read(&mut buf).await.unwrap_or(0) > 0 {}
    })
    .await;
}

/// A plain TCP server on 127.0.0.1 that lies; returns its port.
async fn liar(lie: Lie) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(act(tcp, lie.clone()));
        }
    });
    Ok(port)
}

/// A TLS server on `ip` with slapd's own certificate (so the handshake succeeds for 127.0.0.1) that lies
/// once the handshake is done; returns its port.
async fn tls_liar(slapd: &Slapd, ip: &str, lie: Lie) -> anyhow::Result<u16> {
    let certs = CertificateDer::pem_slice_iter(slapd.server_cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(slapd.server_key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((ip, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let lie = lie.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    act(tls, lie).await;
                }
            });
        }
    });
    Ok(port)
}

/// An LDAP ExtendedResponse for message 1 with `code` (a StartTLS refusal).
fn extended_response(code: u8) -> Vec<u8> {
    vec![
        0x30, 0x0c, 0x02, 0x01, 0x01, 0x78, 0x07, 0x0a, 0x01, code, 0x04, 0x00, 0x04, 0x00,
    ]
}

/// A login against a lying or silent server; `what` is the error expected. A server that never answers is
/// given [`SHORT`]; the others are given [`TIMEOUT`], so a busy machine (a panic's backtrace being
/// printed, a slow TLS handshake) cannot turn their lie into a deadline.
async fn against(cfg: &LdapConfig, what: &str) -> LdapError {
    let timeout = if what.starts_with("did not answer within") {
        SHORT
    } else {
        TIMEOUT
    };
    let started = Instant::now();
    let got = authenticate(cfg, "alice", "alice-password", timeout).await;
    let took = started.elapsed();
    assert!(took < timeout + SLACK, "{what}: took {took:?}");
    match got {
        Err(e) => e,
        Ok(v) => panic!("{what}: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_that_lie_or_stay_silent_in_clear() -> anyhow::Result<()> {
    let ca = slapd::unrelated_ca_pem()?;
    let cfg_for = |port: u16, starttls: bool| -> LdapConfig {
        serde_json::from_value(serde_json::json!({
            "url": format!("{}://127.0.0.1:{port}", if starttls { "ldap" } else { "ldaps" }),
            "starttls": starttls,
            "ca_pem": ca,
            "bind_dn": "uid={username},ou=people,dc=portico,dc=test",
            "user_base": "ou=people,dc=portico,dc=test",
        }))
        .expect("settings")
    };
    let garbage: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    let cases: Vec<(Lie, bool, &str)> = vec![
        // LDAPS: the TLS handshake is what fails.
        (Lie::Garbage(garbage), false, "tls with the directory"),
        (Lie::Close, false, "closed the connection during the handshake"),
        (Lie::Silent, false, "did not answer within 2s (tls handshake)"),
        // StartTLS: our own exchange tells what went wrong.
        (Lie::Garbage(garbage), true, "not an ldap message"),
        (Lie::Garbage(&[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff]), true, "at most"),
        (Lie::Answer(vec![0x30, 0x00]), true, "message id: truncated"),
        (Lie::Close, true, "closed the connection before answering starttls"),
        (Lie::Silent, true, "did not answer within 2s (starttls)"),
        (Lie::Answer(extended_response(2)), true, "refused the starttls"),
    ];
    for (lie, starttls, want) in cases {
        let port = liar(lie).await?;
        let e = against(&cfg_for(port, starttls), want).await;
        assert!(e.to_string().contains(want), "starttls {starttls}: {e} (want {want:?})");
        match e {
            LdapError::Protocol { .. }
            | LdapError::Tls { .. }
            | LdapError::Timeout { .. }
            | LdapError::Refused { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    Ok(())
}

/// ldap3's expected panic (see below) printed as one line instead of a backtrace: the backtrace cost a
/// busy machine CPU time inside the deadline, and filled the failure report that CI keeps, hiding other
/// tests' messages. Every other panic goes to the hook that was there.
fn quiet_ldap3_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("/ldap3-")) {
                eprintln!("ldap3 panicked (expected on a malformed message): {info}");
            } else {
                previous(info);
            }
        }));
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_that_lie_inside_tls() -> anyhow::Result<()> {
    quiet_ldap3_panics();
    // Only slapd's certificate and CA are used; the directory itself is not contacted.
    let slapd = Slapd::start()?;
    let cases: Vec<(Lie, &str)> = vec![
        // A complete BER element that is not an LDAPMessage (an INTEGER where the SEQUENCE belongs).
        (Lie::Answer(vec![0x02, 0x01, 0x05]), "not valid ldap"),
        // An empty LDAPMessage SEQUENCE: ldap3's decoder panics on it (in its connection task).
        (Lie::Answer(vec![0x30, 0x00]), "malformed message"),
        // A BindResponse for a message the client never sent: ignored, so the deadline ends it.
        (
            Lie::Answer(vec![
                0x30, 0x0c, 0x02, 0x01, 0x07, 0x61, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
            ]),
            "did not answer within 2s (bind)",
        ),
        (Lie::Close, "connection to the directory ended"),
        (Lie::Silent, "did not answer within 2s (bind)"),
    ];
    for (lie, want) in cases {
        let port = tls_liar(&slapd, "127.0.0.1", lie).await?;
        let cfg = LdapConfig {
            url: format!("ldaps://127.0.0.1:{port}"),
            ..config(&slapd, false)
        };
        let e = against(&cfg, want).await;
        assert!(e.to_string().contains(want), "{e} (want {want:?})");
        assert!(
            matches!(e, LdapError::Protocol { .. } | LdapError::Timeout { .. }),
            "{e:?}"
        );
    }
    // A directory that refuses the bind for a reason other than the credentials: an error, not "wrong password".
    let port = tls_liar(
        &slapd,
        "127.0.0.1",
        Lie::Answer(vec![
            0x30, 0x0c, 0x02, 0x01, 0x01, 0x61, 0x07, 0x0a, 0x01, 0x35, 0x04, 0x00, 0x04, 0x00,
        ]),
    )
    .await?;
    let cfg = LdapConfig {
        url: format!("ldaps://127.0.0.1:{port}"),
        ..config(&slapd, false)
    };
    let e = against(&cfg, "unwilling").await;
    assert!(
        matches!(
            e,
            LdapError::Refused {
                operation: "bind",
                code: 53,
                ..
            }
        ),
        "{e}"
    );
    // And the real directory still works with the same client.
    let ok = login(&config(&slapd, false), "alice", Slapd::password("alice")).await?;
    assert!(ok.is_some());
    Ok(())
}
