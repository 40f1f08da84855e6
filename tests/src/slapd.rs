//! A real OpenLDAP `slapd` (Debian's) on 127.0.0.1 for the LDAP login tests: its own CA and server
//! certificate (IP SAN 127.0.0.1, DNS SAN localhost), an mdb database seeded with `slapadd`, LDAP (with
//! StartTLS) and LDAPS listeners, run in the foreground as a child and stopped by PID.
//!
//! The directory (base [`BASE`]):
//! - `ou=people`: the users of [`USERS`] (inetOrgPerson, `{SSHA}` passwords), and [`DUPLICATE_UID`] twice
//!   (once directly under `ou=people`, once under `ou=contractors,ou=people`), for a filter that matches two;
//! - `ou=groups`: groupOfNames `helpdesk`, `vpn` and `admins` (members as in [`USERS`]); the dynlist
//!   overlay shows them as `memberOf` on the users' entries, as Active Directory does;
//! - `ou=posixgroups`: posixGroup `developers` with `memberUid: alice` and `memberUid: bob`.
//!
//! Access: anonymous binds are refused (and slapd refuses unauthenticated binds by default); a bound user
//! reads everything under the base except passwords.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::peers::{free_port, need, run, scratch, stop_child};

/// The directory's suffix.
pub const BASE: &str = "dc=portico,dc=test";
/// The administrator (slapd's rootdn), for tests that change the directory with `ldapmodify`.
pub const ROOT_DN: &str = "cn=admin,dc=portico,dc=test";
/// The uid of two entries (same password), for the "filter matches several entries" case.
pub const DUPLICATE_UID: &str = "dup";
pub const DUPLICATE_PASSWORD: &str = "dup-Passw0rd-1";

/// A seeded user: uid, password, display name, and groups (`ou=groups`).
#[derive(Debug, Clone, Copy)]
pub struct SeedUser {
    pub uid: &'static str,
    pub password: &'static str,
    pub display_name: &'static str,
    pub groups: &'static [&'static str],
}

/// The seeded users. `o'brien, jr (ops)` has characters special in DNs (`,`) and in filters (`(`, `)`);
/// `star*` binds for real with a filter wildcard in its name, next to `starfish` that an unescaped
/// `(uid=star*)` would match too.
pub const USERS: &[SeedUser] = &[
    SeedUser {
        uid: "alice",
        password: "alice-Passw0rd-1",
        display_name: "Alice Liddell",
        groups: &["helpdesk", "vpn"],
    },
    SeedUser {
        uid: "bob",
        password: "bob-Passw0rd-1",
        display_name: "Bob Builder",
        groups: &[],
    },
    SeedUser {
        uid: "carol",
        password: "carol-Passw0rd-1",
        display_name: "Carol Danvers",
        groups: &["admins", "vpn"],
    },
    SeedUser {
        uid: "star*",
        password: "star-Passw0rd-1",
        display_name: "Star Asterisk",
        groups: &[],
    },
    SeedUser {
        uid: "starfish",
        password: "starfish-Passw0rd-1",
        display_name: "Patrick Starfish",
        groups: &[],
    },
    SeedUser {
        uid: "o'brien, jr (ops)",
        password: "obrien-Passw0rd-1",
        display_name: "Pat O'Brien Jr.",
        groups: &["helpdesk"],
    },
];

/// The groupOfNames entries in `ou=groups`.
pub const GROUPS: &[&str] = &["admins", "helpdesk", "vpn"];

/// A running slapd.
pub struct Slapd {
    /// `ldap://127.0.0.1:PORT` (StartTLS offered; plain binds are refused by nothing but the client).
    pub ldap_url: String,
    /// `ldaps://127.0.0.1:PORT`.
    pub ldaps_url: String,
    pub ldap_port: u16,
    pub ldaps_port: u16,
    /// The CA that signed the server certificate (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM) and its key (PKCS#8 PEM): valid for 127.0.0.1 and localhost.
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// [`BASE`].
    pub base: String,
    /// The rootdn's password.
    pub root_password: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// A new self-signed CA in `dir` (`{name}.pem`, `{name}.key`); returns the certificate's PEM.
pub(crate) fn make_ca(dir: &Path, name: &str, subject: &str) -> anyhow::Result<String> {
    run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(dir.join(format!("{name}.pem")))
            .args(["-days", "2", "-subj", subject])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        "openssl req (ca)",
    )?;
    Ok(fs::read_to_string(dir.join(format!("{name}.pem")))?)
}

/// A CA that signed nothing this harness serves (PEM), for "wrong CA" tests.
pub fn unrelated_ca_pem() -> anyhow::Result<String> {
    need("/usr/bin/openssl", "openssl")?;
    let dir = scratch("unrelated-ca")?;
    let pem = make_ca(&dir, "ca", "/CN=Portico test unrelated CA");
    let _ = fs::remove_dir_all(&dir);
    pem
}

/// `{SSHA}` of `password`, by slappasswd.
fn ssha(password: &str) -> anyhow::Result<String> {
    let out = run(
        Command::new("/usr/sbin/slappasswd").args(["-h", "{SSHA}", "-s", password]),
        "slappasswd",
    )?;
    Ok(out.trim().to_owned())
}

/// The DN of a seeded user directly under `ou=people` (DN-escaped as RFC 4514 wants).
pub fn user_dn(uid: &str) -> String {
    format!("uid={},ou=people,{BASE}", portico_webapp::ldap::escape_dn_value(uid))
}

impl Slapd {
    pub fn start() -> anyhow::Result<Slapd> {
        need("/usr/sbin/slapd", "slapd")?;
        need("/usr/sbin/slapadd", "slapd")?;
        need("/usr/bin/ldapsearch", "ldap-utils")?;
        need("/usr/bin/openssl", "openssl")?;
        let dir = scratch("slapd")?;
        let ca_pem = make_ca(&dir, "ca", "/CN=Portico test LDAP CA")?;
        let (server_cert_pem, server_key_pem) = Self::server_cert(&dir)?;
        let root_password = format!("root-{}", uuid::Uuid::new_v4().simple());
        let mut slapd = Slapd {
            ldap_url: String::new(),
            ldaps_url: String::new(),
            ldap_port: 0,
            ldaps_port: 0,
            ca_pem,
            server_cert_pem,
            server_key_pem,
            base: BASE.to_owned(),
            root_password,
            dir,
            child: None,
        };
        slapd.write_config()?;
        slapd.seed()?;
        // Another process may grab a free port between choosing and binding: retry with new ones.
        let mut last = None;
        for _ in 0..5 {
            slapd.ldap_port = free_port();
            slapd.ldaps_port = free_port();
            if slapd.ldap_port == slapd.ldaps_port {
                continue;
            }
            slapd.ldap_url = format!("ldap://127.0.0.1:{}", slapd.ldap_port);
            slapd.ldaps_url = format!("ldaps://127.0.0.1:{}", slapd.ldaps_port);
            match slapd.launch() {
                Ok(()) => return Ok(slapd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("slapd did not start")))
    }

    /// A server key and certificate signed by the CA in `dir`, for 127.0.0.1 and localhost.
    pub(crate) fn server_cert(dir: &Path) -> anyhow::Result<(String, String)> {
        let ext = dir.join("server.ext");
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                ])
                .arg("-keyout")
                .arg(dir.join("server.key"))
                .arg("-out")
                .arg(dir.join("server.csr"))
                .args(["-subj", "/CN=localhost"]),
            "openssl req (server)",
        )?;
        let serial = format!("0x{}", uuid::Uuid::new_v4().simple());
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-in"])
                .arg(dir.join("server.csr"))
                .arg("-CA")
                .arg(dir.join("ca.pem"))
                .arg("-CAkey")
                .arg(dir.join("ca.key"))
                .args(["-set_serial", &serial, "-days", "2", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(dir.join("server.pem")),
            "openssl x509 (server)",
        )?;
        Ok((
            fs::read_to_string(dir.join("server.pem"))?,
            fs::read_to_string(dir.join("server.key"))?,
        ))
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let dir = self.dir.display();
        fs::create_dir_all(self.dir.join("data"))?;
        fs::write(
            self.dir.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 include /etc/ldap/schema/nis.schema\n\
                 include /etc/ldap/schema/dyngroup.schema\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 moduleload dynlist\n\
                 pidfile {dir}/slapd.pid\n\
                 argsfile {dir}/slapd.args\n\
                 TLSCACertificateFile {dir}/ca.pem\n\
                 TLSCertificateFile {dir}/server.pem\n\
                 TLSCertificateKeyFile {dir}/server.key\n\
                 disallow bind_anon\n\
                 \n\
                 database mdb\n\
                 maxsize 104857600\n\
                 suffix \"{BASE}\"\n\
                 rootdn \"{ROOT_DN}\"\n\
                 rootpw {root}\n\
                 directory {dir}/data\n\
                 index objectClass eq\n\
                 index uid eq\n\
                 index member eq\n\
                 index memberUid eq\n\
                 \n\
                 # memberOf on the users' entries, computed from the groups (as Active Directory shows it).\n\
                 overlay dynlist\n\
                 dynlist-attrset groupOfURLs memberURL member+memberOf@groupOfNames\n\
                 \n\
                 access to attrs=userPassword\n  by anonymous auth\n  by * none\n\
                 access to dn.subtree=\"{BASE}\"\n  by users read\n  by * none\n",
                root = self.root_password,
            ),
        )?;
        run(
            Command::new("/usr/sbin/slaptest")
                .arg("-u")
                .arg("-f")
                .arg(self.dir.join("slapd.conf")),
            "slaptest",
        )?;
        Ok(())
    }

    fn seed(&self) -> anyhow::Result<()> {
        let mut ldif = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: portico\no: Portico test\n\n\
             dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=contractors,ou=people,{BASE}\nobjectClass: organizationalUnit\nou: contractors\n\n\
             dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=posixgroups,{BASE}\nobjectClass: organizationalUnit\nou: posixgroups\n\n"
        );
        let person = |dn: &str, uid: &str, display: &str, password: &str| -> anyhow::Result<String> {
            let sn = display.rsplit(' ').next().unwrap_or(uid);
            Ok(format!(
                "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {display}\nsn: {sn}\n\
                 displayName: {display}\nuserPassword: {}\n\n",
                ssha(password)?
            ))
        };
        for u in USERS {
            ldif.push_str(&person(&user_dn(u.uid), u.uid, u.display_name, u.password)?);
        }
        ldif.push_str(&person(
            &user_dn(DUPLICATE_UID),
            DUPLICATE_UID,
            "Dup Licate",
            DUPLICATE_PASSWORD,
        )?);
        ldif.push_str(&person(
            &format!("uid={DUPLICATE_UID},ou=contractors,ou=people,{BASE}"),
            DUPLICATE_UID,
            "Dup Contractor",
            DUPLICATE_PASSWORD,
        )?);
        for g in GROUPS {
            ldif.push_str(&format!(
                "dn: cn={g},ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: {g}\n"
            ));
            for u in USERS.iter().filter(|u| u.groups.contains(g)) {
                ldif.push_str(&format!("member: {}\n", user_dn(u.uid)));
            }
            ldif.push('\n');
        }
        ldif.push_str(&format!(
            "dn: cn=developers,ou=posixgroups,{BASE}\nobjectClass: posixGroup\ncn: developers\ngidNumber: 5000\n\
             memberUid: alice\nmemberUid: bob\n\n"
        ));
        let path = self.dir.join("seed.ldif");
        fs::write(&path, ldif)?;
        run(
            Command::new("/usr/sbin/slapadd")
                .arg("-f")
                .arg(self.dir.join("slapd.conf"))
                .arg("-l")
                .arg(&path),
            "slapadd",
        )?;
        Ok(())
    }

    /// Start slapd (again) on the chosen ports and wait until an LDAPS search as the rootdn answers.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("slapd is already running");
        }
        let log = fs::File::create(self.dir.join("slapd.log"))?;
        let urls = format!(
            "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
            self.ldap_port, self.ldaps_port
        );
        // `-d stats`: stay in the foreground (stopped by PID) and log each connection and operation.
        let child = Command::new("/usr/sbin/slapd")
            .args(["-d", "stats", "-h", &urls, "-f"])
            .arg(self.dir.join("slapd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start slapd")?;
        self.child = Some(child);
        let start = Instant::now();
        let limit = Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("slapd exited ({status}) before answering; log:\n{}", self.log());
            }
            if self.answers() {
                return Ok(());
            }
            if start.elapsed() > limit {
                self.stop();
                bail!(
                    "timed out after {limit:?} waiting for slapd to answer; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An LDAPS search of the base entry as the rootdn, bounded by ldapsearch's own 2 s limits.
    fn answers(&self) -> bool {
        let port_open =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.ldaps_port).into(), Duration::from_millis(200)).is_ok();
        port_open
            && Command::new("/usr/bin/ldapsearch")
                .env("LDAPTLS_CACERT", self.dir.join("ca.pem"))
                .env("LDAPTLS_REQCERT", "demand")
                .args(["-LLL", "-x", "-o", "nettimeout=2", "-l", "2", "-H", &self.ldaps_url])
                .args(["-D", ROOT_DN, "-w", &self.root_password, "-b", BASE, "-s", "base", "dn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Stop slapd (the data stays; [`Slapd::launch`] starts it again on the same ports).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// The plain password of a seeded user (panics for a uid that is not seeded: a bug in the test).
    pub fn password(uid: &str) -> &'static str {
        if uid == DUPLICATE_UID {
            return DUPLICATE_PASSWORD;
        }
        USERS
            .iter()
            .find(|u| u.uid == uid)
            .map(|u| u.password)
            .unwrap_or_else(|| panic!("no seeded LDAP user {uid:?}"))
    }

    /// Settings for Portico's LDAP client (`portico_webapp::ldap::LdapConfig` as JSON): LDAPS, or LDAP
    /// with StartTLS; bind as `uid={username},ou=people`, groups from `ou=groups`.
    pub fn settings(&self, starttls: bool) -> Value {
        json!({
            "url": if starttls { &self.ldap_url } else { &self.ldaps_url },
            "starttls": starttls,
            "ca_pem": self.ca_pem,
            "bind_dn": format!("uid={{username}},ou=people,{BASE}"),
            "user_base": format!("ou=people,{BASE}"),
            "group_base": format!("ou=groups,{BASE}"),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// slapd's log (`-d stats`: one line per connection and operation).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default()
    }

    /// How many connections slapd has accepted so far (from its log).
    pub fn connections(&self) -> usize {
        self.log().lines().filter(|l| l.contains(" ACCEPT from ")).count()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
