//! The cluster's certificate authority and the certificates it issues.
//!
//! Guarantees:
//! - [`init_cluster`] creates one fresh CA per cluster and signs every leaf
//!   with it; it never overwrites an existing CA or any existing file (each
//!   file is created with O_EXCL), and private keys are written with mode
//!   0600 from the moment they exist.
//! - Replica certificates name `replica-{i}.chorus` and `server.chorus` and
//!   may act as TLS server and client (replicas talk to each other); the
//!   client (`client.chorus`) and admin (`admin.chorus`) certificates are for
//!   TLS client authentication only, so a stolen client key cannot pose as a
//!   server.
//! - [`peer_role`] tells a server which kind of peer a connection belongs
//!   to, from the SAN of a certificate that the handshake already verified;
//!   [`peer_cert`] tells it what that certificate may claim ([`CertInfo`]).
//! - Every certificate has a real expiry: the CA and the certificates of
//!   [`init_cluster`] [`INIT_DAYS`] days, per-host client certificates of
//!   [`issue_client`] [`CLIENT_DAYS_DEFAULT`] unless told otherwise, never
//!   past the CA's own expiry. [`load_identity`] refuses an expired
//!   certificate of its own with a message that says so.
//! - [`issue_client`] signs a per-host client certificate with the CA of a
//!   certificates folder and writes a client bundle (`ca.pem`, `client.pem`,
//!   `client.key`) that holds no CA key; a copy of the certificate (no key)
//!   stays in the folder's `issued/`, so it can be listed and revoked by name.
//! - Root: a client certificate may act as uid 0 only if it names
//!   [`TRUST_ROOT_NAME`] (the `client` certificate of [`init_cluster`], and
//!   those issued with `trust_root`) or is the admin certificate; servers
//!   squash every other certificate's root (see [`CertInfo::may_act_as_root`]).
//!
//! Assumes: the directory is private to the operator (the CA key is in it).
//! Why: one CA per cluster makes "unknown certificates are refused" a pure
//! TLS property (DESIGN §6): anything not signed by this CA fails the handshake.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

use crate::error::WireError;

/// The name every replica's certificate carries and every client verifies.
pub const SERVER_NAME: &str = "server.chorus";
/// SAN of the client certificate.
pub const CLIENT_NAME: &str = "client.chorus";
/// SAN of the admin certificate.
pub const ADMIN_NAME: &str = "admin.chorus";
/// A client certificate naming this (as a SAN) may act as root (uid 0).
pub const TRUST_ROOT_NAME: &str = "trust-root.chorus";
/// Per-host client certificates also name `<host>` + this suffix.
pub const HOST_SUFFIX: &str = ".host.chorus";
/// Days the CA and the certificates made by [`init_cluster`] are valid.
pub const INIT_DAYS: u32 = 3650;
/// Default validity of a certificate made by [`issue_client`].
pub const CLIENT_DAYS_DEFAULT: u32 = 365;
/// Longest validity [`issue_client`] accepts.
pub const CLIENT_DAYS_MAX: u32 = 3650;
/// Folder (inside a certificates folder) with a copy of every issued client certificate.
pub const ISSUED_DIR: &str = "issued";
const DAY: Duration = Duration::from_secs(86_400);
/// Upper bound on replicas per cluster (a universe is a handful of replicas;
/// this only guards against typos like `--replicas 30000`).
pub const REPLICAS_MAX: usize = 255;

/// Which certificate of the cluster a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Replica number `i` (0-based) of the universe.
    Replica(usize),
    /// A mounting client.
    Client,
    /// The operator's tools (`chorus status`, `chorus checkpoint`...).
    Admin,
}

impl Role {
    /// File stem of this role's certificate and key (`replica-0`, `client`, `admin`).
    pub fn file_stem(&self) -> String {
        match self {
            Role::Replica(i) => format!("replica-{i}"),
            Role::Client => "client".into(),
            Role::Admin => "admin".into(),
        }
    }

    /// The DNS name (SAN) that identifies this role.
    pub fn dns_name(&self) -> String {
        match self {
            Role::Replica(i) => format!("replica-{i}.chorus"),
            Role::Client => CLIENT_NAME.into(),
            Role::Admin => ADMIN_NAME.into(),
        }
    }

    /// Parses a SAN back into a role (the inverse of [`Role::dns_name`]).
    pub fn from_dns_name(name: &str) -> Option<Role> {
        match name {
            CLIENT_NAME => Some(Role::Client),
            ADMIN_NAME => Some(Role::Admin),
            _ => {
                let digits = name.strip_prefix("replica-")?.strip_suffix(".chorus")?;
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse().ok().map(Role::Replica)
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_stem())
    }
}

/// A process's TLS identity: the cluster CA it trusts, its own certificate
/// chain, and its private key.
pub struct Identity {
    pub(crate) ca: CertificateDer<'static>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { ca: self.ca.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Identity").field("chain_len", &self.chain.len()).finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from PEM text: the CA certificate to trust, this
    /// process's certificate (chain), and its private key.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Identity, WireError> {
        let ca = parse_certs(ca_pem.as_bytes(), Path::new("<ca pem>"))?.remove(0);
        let chain = parse_certs(cert_pem.as_bytes(), Path::new("<cert pem>"))?;
        let key = parse_key(key_pem.as_bytes(), Path::new("<key pem>"))?;
        Ok(Identity { ca, chain, key })
    }

    /// The CA certificate this identity trusts (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// This identity's own leaf certificate (DER).
    pub fn leaf_der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

/// Creates a cluster CA and leaf certificates in `dir`: `ca.pem`, `ca.key`,
/// `replica-{i}.pem/.key` for i in 0..replicas, `client.pem/.key`,
/// `admin.pem/.key`. Fails with [`WireError::CaExists`] if `dir` already has
/// a CA; never overwrites any file.
pub fn init_cluster(dir: &Path, replicas: usize) -> Result<(), WireError> {
    if replicas == 0 || replicas > REPLICAS_MAX {
        return Err(WireError::CertGen(format!("replica count must be 1..={REPLICAS_MAX}, got {replicas}")));
    }
    std::fs::create_dir_all(dir).map_err(|source| WireError::Io { path: dir.to_path_buf(), source })?;
    if dir.join("ca.pem").exists() || dir.join("ca.key").exists() {
        return Err(WireError::CaExists(dir.to_path_buf()));
    }

    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::OrganizationName, "ChorusFS");
    // A per-cluster name: certificate paths are built by issuer NAME, so two
    // clusters' CAs must not share one, or a foreign certificate would be
    // matched to our CA and fail only on its signature (a confusing error)
    // instead of "unknown CA".
    let cluster_tag: String = ca_params.key_identifier(&ca_key)[..8].iter().map(|b| format!("{b:02x}")).collect();
    ca_params.distinguished_name.push(DnType::CommonName, format!("ChorusFS cluster CA {cluster_tag}"));
    // Path length 0: the CA signs leaves only, never another CA.
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let now = SystemTime::now();
    ca_params.not_before = (now - DAY).into();
    ca_params.not_after = (now + DAY * INIT_DAYS).into();
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen_err)?;

    // CA first, with O_EXCL: two concurrent `init`s cannot both succeed.
    write_new(&dir.join("ca.key"), ca_key_pem.as_bytes(), 0o600).map_err(|e| exists_is_ca(e, dir))?;
    write_new(&dir.join("ca.pem"), ca.pem().as_bytes(), 0o644).map_err(|e| exists_is_ca(e, dir))?;

    let mut roles: Vec<Role> = (0..replicas).map(Role::Replica).collect();
    roles.push(Role::Client);
    roles.push(Role::Admin);
    let leaf_until = now + DAY * INIT_DAYS;
    for role in roles {
        // The cluster's own `client` certificate (for `chorus up`, the
        // operator's machine and the tests, which mount as root) may act as root.
        let extra: Vec<String> = if role == Role::Client { vec![TRUST_ROOT_NAME.into()] } else { Vec::new() };
        let (cert_pem, key_pem) = issue_leaf(&ca, role, &extra, now - DAY, leaf_until)?;
        let stem = role.file_stem();
        write_new(&dir.join(format!("{stem}.key")), key_pem.as_bytes(), 0o600)?;
        write_new(&dir.join(format!("{stem}.pem")), cert_pem.as_bytes(), 0o644)?;
    }
    tracing::info!(dir = %dir.display(), replicas, "created cluster CA and certificates");
    Ok(())
}

/// Signs a leaf certificate for `role` (with `extra` SANs), valid from
/// `not_before` to `not_after`; returns (certificate PEM, key PEM).
fn issue_leaf(
    ca: &Issuer<'_, KeyPair>,
    role: Role,
    extra: &[String],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(String, String), WireError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut names = vec![role.dns_name()];
    names.extend(extra.iter().cloned());
    let mut ekus = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Role::Replica(_) = role {
        names.push(SERVER_NAME.to_string());
        ekus.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    let mut params = CertificateParams::new(names).map_err(gen_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "ChorusFS");
    params.distinguished_name.push(DnType::CommonName, role.dns_name());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = ekus;
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params.signed_by(&key, ca).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Loads the CA and the leaf for `role` from `dir`.
pub fn load_identity(dir: &Path, role: Role) -> Result<Identity, WireError> {
    let ca_path = dir.join("ca.pem");
    let stem = role.file_stem();
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    let ca_pem = read_file(&ca_path)?;
    let cert_pem = read_file(&cert_path)?;
    let key_pem = read_file(&key_path)?;
    let ca = parse_certs(&ca_pem, &ca_path)?.remove(0);
    let chain = parse_certs(&cert_pem, &cert_path)?;
    let key = parse_key(&key_pem, &key_path)?;
    check_validity(&chain[0], &cert_path, SystemTime::now())?;
    Ok(Identity { ca, chain, key })
}

/// Days before its expiry from which loading a certificate warns.
pub const EXPIRY_WARNING_DAYS: u32 = 30;

/// Refuses a certificate that expired (or is not valid yet) at `now`, in
/// words a user can act on; warns when it expires within
/// [`EXPIRY_WARNING_DAYS`].
fn check_validity(cert: &CertificateDer<'_>, path: &Path, now: SystemTime) -> Result<(), WireError> {
    let Some((not_before, not_after)) = validity(cert) else {
        return Err(WireError::CertLoad { path: path.to_path_buf(), reason: "cannot read the certificate's validity".into() });
    };
    let renew = "issue a new one (`chorus cert issue`, or a new `chorus init` for the cluster's own certificates)";
    if now > not_after {
        return Err(WireError::CertLoad {
            path: path.to_path_buf(),
            reason: format!("certificate expired on {} — {renew}", day(not_after)),
        });
    }
    if now < not_before {
        return Err(WireError::CertLoad {
            path: path.to_path_buf(),
            reason: format!("certificate not valid before {} (is this machine's clock right?)", day(not_before)),
        });
    }
    if not_after.duration_since(now).unwrap_or_default() < DAY * EXPIRY_WARNING_DAYS {
        tracing::warn!(cert = %path.display(), expires = %day(not_after), "certificate expires soon; {renew}");
    }
    Ok(())
}

/// (not before, not after) of a certificate; None if it does not parse.
pub fn validity(cert: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    Some((at(parsed.validity().not_before), at(parsed.validity().not_after)))
}

/// A date as YYYY-MM-DD (UTC).
pub fn day(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// SHA-256 of a certificate's DER, lowercase hex: what the revocation list names.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(sha2::Sha256::digest(cert.as_ref()))
}

/// What a (verified) certificate names and may claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Its role (None: no ChorusFS role name).
    pub role: Option<Role>,
    /// The host a per-host client certificate was issued for.
    pub host: Option<String>,
    /// It names [`TRUST_ROOT_NAME`].
    pub trust_root: bool,
    /// [`fingerprint`] of the certificate.
    pub fingerprint: String,
}

impl CertInfo {
    /// Whether requests over this certificate may act as uid 0 / gid 0:
    /// admin certificates and those naming [`TRUST_ROOT_NAME`]. Servers
    /// squash root (to nobody) for every other client certificate.
    pub fn may_act_as_root(&self) -> bool {
        self.trust_root || self.role == Some(Role::Admin)
    }

    /// A short name for logs: the host, else the role, plus a fingerprint prefix.
    pub fn label(&self) -> String {
        let who = match (&self.host, self.role) {
            (Some(h), _) => h.clone(),
            (None, Some(r)) => r.file_stem(),
            (None, None) => "?".into(),
        };
        format!("{who} ({})", &self.fingerprint[..16])
    }
}

/// What `cert` names and may claim (see [`CertInfo`]).
pub fn cert_info(cert: &CertificateDer<'_>) -> CertInfo {
    let names: Vec<String> =
        webpki::EndEntityCert::try_from(cert).map(|c| c.valid_dns_names().map(str::to_string).collect()).unwrap_or_default();
    CertInfo {
        role: role_of_cert(cert),
        host: names.iter().find_map(|n| n.strip_suffix(HOST_SUFFIX).map(str::to_string)),
        trust_root: names.iter().any(|n| n == TRUST_ROOT_NAME),
        fingerprint: fingerprint(cert),
    }
}

/// What the peer certificate of `conn` names and may claim; None if it
/// presented none (impossible on a connection a server accepted).
pub fn peer_cert(conn: &quinn::Connection) -> Option<CertInfo> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(cert_info)
}

/// How [`issue_client`] makes a certificate.
#[derive(Clone, Debug)]
pub struct IssueOptions {
    /// The client host: 1 to 63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
    pub host: String,
    /// The certificate may act as root (uid 0) on the file system.
    pub trust_root: bool,
    /// Valid from...
    pub not_before: SystemTime,
    /// ...until (capped at the CA's own expiry).
    pub not_after: SystemTime,
}

impl IssueOptions {
    /// Valid from now (less a minute, for clocks a little behind) for `days` days.
    pub fn for_days(host: &str, days: u32, trust_root: bool) -> Result<IssueOptions, WireError> {
        if days == 0 || days > CLIENT_DAYS_MAX {
            return Err(WireError::CertGen(format!("--days must be 1..={CLIENT_DAYS_MAX}, got {days}")));
        }
        let now = SystemTime::now();
        Ok(IssueOptions { host: host.to_string(), trust_root, not_before: now - Duration::from_secs(60), not_after: now + DAY * days })
    }
}

/// What [`issue_client`] made.
#[derive(Clone, Debug)]
pub struct Issued {
    /// [`fingerprint`] of the new certificate (what `chorus cert revoke` lists).
    pub fingerprint: String,
    /// Its expiry.
    pub not_after: SystemTime,
    /// The copy of the certificate kept in the certificates folder.
    pub record: PathBuf,
}

fn check_host(host: &str) -> Result<(), WireError> {
    let ok = !host.is_empty()
        && host.len() <= 63
        && host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !host.starts_with('-')
        && !host.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(WireError::CertGen(format!("host name {host:?} must be 1 to 63 of a-z, 0-9 and '-' (not first or last), e.g. `web-3`")))
    }
}

/// Signs a client certificate for `opts.host` with the CA in `certs_dir`
/// (`ca.pem`, `ca.key`) and writes a client bundle to `out_dir` (created;
/// must not hold a bundle yet): `ca.pem`, `client.pem`, `client.key` (0600),
/// and no CA key, so `chorus mount --certs OUT_DIR` works on a machine that
/// never sees the CA key. A copy of the certificate (no key) goes to
/// `certs_dir/issued/<host>-<fingerprint prefix>.pem`.
pub fn issue_client(certs_dir: &Path, out_dir: &Path, opts: &IssueOptions) -> Result<Issued, WireError> {
    check_host(&opts.host)?;
    if opts.not_after <= opts.not_before {
        return Err(WireError::CertGen("the certificate would expire before it is valid".into()));
    }
    let ca_path = certs_dir.join("ca.pem");
    let ca_key_path = certs_dir.join("ca.key");
    let ca_pem = read_file(&ca_path)?;
    let ca_key_pem = String::from_utf8(read_file(&ca_key_path)?)
        .map_err(|_| WireError::CertLoad { path: ca_key_path.clone(), reason: "not a PEM key file".into() })?;
    let ca_der = parse_certs(&ca_pem, &ca_path)?.remove(0);
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| WireError::CertLoad { path: ca_key_path.clone(), reason: format!("not a usable CA key: {e}") })?;
    let (_, ca_until) =
        validity(&ca_der).ok_or_else(|| WireError::CertLoad { path: ca_path.clone(), reason: "cannot read the CA certificate".into() })?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)
        .map_err(|e| WireError::CertLoad { path: ca_path.clone(), reason: format!("not a usable CA certificate: {e}") })?;
    let not_after = if opts.not_after > ca_until {
        tracing::warn!(ca_expires = %day(ca_until), "the cluster CA expires first: the certificate is valid until then");
        ca_until
    } else {
        opts.not_after
    };
    let mut extra = vec![format!("{}{HOST_SUFFIX}", opts.host)];
    if opts.trust_root {
        extra.push(TRUST_ROOT_NAME.into());
    }
    let (cert_pem, key_pem) = issue_leaf(&issuer, Role::Client, &extra, opts.not_before, not_after)?;
    let cert_der = parse_certs(cert_pem.as_bytes(), Path::new("<new certificate>"))?.remove(0);
    let fp = fingerprint(&cert_der);

    std::fs::create_dir_all(out_dir).map_err(|source| WireError::Io { path: out_dir.to_path_buf(), source })?;
    for name in ["ca.key", "client.key", "client.pem"] {
        if out_dir.join(name).exists() {
            return Err(WireError::CertGen(format!(
                "{} already holds {name}; give an empty folder for the client bundle",
                out_dir.display()
            )));
        }
    }
    let issued = certs_dir.join(ISSUED_DIR);
    std::fs::create_dir_all(&issued).map_err(|source| WireError::Io { path: issued.clone(), source })?;
    let record = issued.join(format!("{}-{}.pem", opts.host, &fp[..16]));
    write_new(&record, cert_pem.as_bytes(), 0o644)?;
    write_new(&out_dir.join("client.key"), key_pem.as_bytes(), 0o600)?;
    write_new(&out_dir.join("client.pem"), cert_pem.as_bytes(), 0o644)?;
    if !out_dir.join("ca.pem").exists() {
        write_new(&out_dir.join("ca.pem"), &ca_pem, 0o644)?;
    }
    tracing::info!(host = %opts.host, fingerprint = %fp, expires = %day(not_after), trust_root = opts.trust_root, "issued a client certificate");
    Ok(Issued { fingerprint: fp, not_after, record })
}

/// One certificate recorded in a certificates folder's `issued/`.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The record file.
    pub path: PathBuf,
    /// What it names.
    pub info: CertInfo,
    /// Its validity, if readable.
    pub validity: Option<(SystemTime, SystemTime)>,
}

/// Every certificate recorded in `certs_dir/issued/`, by file name.
pub fn list_issued(certs_dir: &Path) -> Result<Vec<IssuedCert>, WireError> {
    let dir = certs_dir.join(ISSUED_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(WireError::Io { path: dir, source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| WireError::Io { path: dir.clone(), source })?.path();
        if path.extension().is_none_or(|e| e != "pem") {
            continue;
        }
        let der = parse_certs(&read_file(&path)?, &path)?.remove(0);
        out.push(IssuedCert { info: cert_info(&der), validity: validity(&der), path });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Reads the first certificate of a PEM file (for `chorus cert revoke --cert`).
pub fn read_cert_file(path: &Path) -> Result<CertificateDer<'static>, WireError> {
    Ok(parse_certs(&read_file(path)?, path)?.remove(0))
}

/// The role of the peer of `conn`, read from the SAN of its certificate.
/// `None` if the peer presented no certificate (impossible on a server built
/// by [`crate::tls::server_config`]) or one without a ChorusFS name. Only
/// meaningful after the handshake verified the certificate against the CA,
/// which is the case for any established connection of this crate.
pub fn peer_role(conn: &quinn::Connection) -> Option<Role> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = chain.first()?;
    role_of_cert(leaf)
}

/// The role named by a certificate's SANs. A replica certificate carries
/// both `replica-{i}.chorus` and `server.chorus`; the replica name wins.
pub fn role_of_cert(cert: &CertificateDer<'_>) -> Option<Role> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let roles: Vec<Role> = parsed.valid_dns_names().filter_map(Role::from_dns_name).collect();
    roles.iter().copied().find(|r| matches!(r, Role::Replica(_))).or_else(|| roles.first().copied())
}

fn gen_err(e: rcgen::Error) -> WireError {
    WireError::CertGen(e.to_string())
}

fn exists_is_ca(e: WireError, dir: &Path) -> WireError {
    match e {
        WireError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => WireError::CaExists(dir.to_path_buf()),
        other => other,
    }
}

/// Creates `path` (failing if it exists) with `mode` and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WireError> {
    let io = |source| WireError::Io { path: path.to_path_buf(), source };
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read_file(path: &Path) -> Result<Vec<u8>, WireError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WireError::CertLoad {
                path: path.to_path_buf(),
                reason: "not found — run `chorus init` to create the cluster's certificates, or point to the right directory".into(),
            }
        } else {
            WireError::Io { path: path.to_path_buf(), source }
        }
    })
}

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, WireError> {
    let load_err = |reason: String| WireError::CertLoad { path: PathBuf::from(path), reason };
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut &pem[..]).collect::<Result<_, _>>().map_err(|e| load_err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(load_err("contains no certificate".into()));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, WireError> {
    let load_err = |reason: String| WireError::CertLoad { path: PathBuf::from(path), reason };
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| load_err(format!("not a PEM key file: {e}")))?
        .ok_or_else(|| load_err("contains no private key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn role_names_round_trip() {
        for role in [Role::Replica(0), Role::Replica(12), Role::Client, Role::Admin] {
            assert_eq!(Role::from_dns_name(&role.dns_name()), Some(role));
        }
        for bad in ["replica-.chorus", "replica-x.chorus", "replica-1.other", "server.chorus", "replica-+1.chorus"] {
            assert_eq!(Role::from_dns_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn init_writes_everything_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster(dir.path(), 3).unwrap();
        for name in ["ca", "replica-0", "replica-1", "replica-2", "client", "admin"] {
            let key_mode = std::fs::metadata(dir.path().join(format!("{name}.key"))).unwrap().permissions().mode();
            assert_eq!(key_mode & 0o777, 0o600, "{name}.key");
            assert!(dir.path().join(format!("{name}.pem")).exists());
        }
        assert!(!dir.path().join("replica-3.pem").exists());
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        assert!(matches!(init_cluster(dir.path(), 3), Err(WireError::CaExists(_))));
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    }

    #[test]
    fn leaves_carry_their_names() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster(dir.path(), 2).unwrap();
        for role in [Role::Replica(0), Role::Replica(1), Role::Client, Role::Admin] {
            let id = load_identity(dir.path(), role).unwrap();
            assert_eq!(role_of_cert(id.leaf_der()), Some(role));
            let cert = webpki::EndEntityCert::try_from(id.leaf_der()).unwrap();
            let names: Vec<&str> = cert.valid_dns_names().collect();
            assert_eq!(names.contains(&SERVER_NAME), matches!(role, Role::Replica(_)), "{role}: {names:?}");
        }
        assert!(matches!(load_identity(dir.path(), Role::Replica(2)), Err(WireError::CertLoad { .. })));
    }

    /// Verifies `leaf` as a server of this cluster would (CA, expiry, key usage) at `at`.
    fn verify_as_server(ca: &CertificateDer<'static>, leaf: &CertificateDer<'_>, at: SystemTime) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), crate::tls::provider()).build().unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        verifier.verify_client_cert(leaf, &[], at).map(|_| ())
    }

    #[test]
    fn init_certificates_expire_and_the_cluster_client_may_act_as_root() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster(dir.path(), 1).unwrap();
        let now = SystemTime::now();
        for role in [Role::Replica(0), Role::Client, Role::Admin] {
            let id = load_identity(dir.path(), role).unwrap();
            let (from, until) = validity(id.leaf_der()).unwrap();
            assert!(from < now && until > now + DAY * (INIT_DAYS - 1) && until < now + DAY * (INIT_DAYS + 1), "{role}");
            let info = cert_info(id.leaf_der());
            assert_eq!(info.role, Some(role));
            assert_eq!(info.may_act_as_root(), role != Role::Replica(0), "{role}");
            assert_eq!(info.host, None);
        }
        let ca = load_identity(dir.path(), Role::Client).unwrap().ca;
        let (_, ca_until) = validity(&ca).unwrap();
        assert!(ca_until > now + DAY * (INIT_DAYS - 1) && ca_until < now + DAY * (INIT_DAYS + 1));
    }

    #[test]
    fn issued_client_bundle_has_no_ca_key_verifies_and_is_squashed_unless_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        init_cluster(&certs, 1).unwrap();
        let out = dir.path().join("web-1");
        let issued = issue_client(&certs, &out, &IssueOptions::for_days("web-1", 30, false).unwrap()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["ca.pem", "client.key", "client.pem"], "a bundle holds no CA key");
        let key_mode = std::fs::metadata(out.join("client.key")).unwrap().permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert!(issued.record.starts_with(certs.join(ISSUED_DIR)) && issued.record.exists());

        let id = load_identity(&out, Role::Client).unwrap();
        let info = cert_info(id.leaf_der());
        assert_eq!(info.role, Some(Role::Client));
        assert_eq!(info.host.as_deref(), Some("web-1"));
        assert!(!info.may_act_as_root());
        assert_eq!(info.fingerprint, issued.fingerprint);
        let now = SystemTime::now();
        verify_as_server(&id.ca, id.leaf_der(), now).expect("the cluster CA accepts it");
        let err = verify_as_server(&id.ca, id.leaf_der(), now + DAY * 31).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })), "{err:?}");

        let trusted = dir.path().join("admin-box");
        issue_client(&certs, &trusted, &IssueOptions::for_days("admin-box", 1, true).unwrap()).unwrap();
        let tid = load_identity(&trusted, Role::Client).unwrap();
        assert!(cert_info(tid.leaf_der()).may_act_as_root());

        let listed = list_issued(&certs).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|c| c.info.host.as_deref() == Some("web-1") && !c.info.trust_root));
        // Never into a folder that holds a bundle; bad names and days are refused.
        assert!(issue_client(&certs, &out, &IssueOptions::for_days("web-1", 30, false).unwrap()).is_err());
        for bad in ["", "-a", "a-", "Web", "a.b", "a/b", &"x".repeat(64)] {
            assert!(
                issue_client(
                    &certs,
                    &dir.path().join("x"),
                    &IssueOptions { host: bad.into(), ..IssueOptions::for_days("x", 1, false).unwrap() }
                )
                .is_err(),
                "{bad:?}"
            );
        }
        assert!(IssueOptions::for_days("a", 0, false).is_err());
        assert!(IssueOptions::for_days("a", CLIENT_DAYS_MAX + 1, false).is_err());
        // Without the CA key nothing can be issued from a bundle.
        assert!(issue_client(&out, &dir.path().join("y"), &IssueOptions::for_days("y", 1, false).unwrap()).is_err());
    }

    #[test]
    fn an_expired_certificate_is_refused_with_its_date() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        init_cluster(&certs, 1).unwrap();
        let out = dir.path().join("old");
        let now = SystemTime::now();
        let opts = IssueOptions { host: "old".into(), trust_root: false, not_before: now - DAY * 10, not_after: now - DAY * 2 };
        let issued = issue_client(&certs, &out, &opts).unwrap();
        let err = load_identity(&out, Role::Client).unwrap_err().to_string();
        assert!(err.contains("expired on") && err.contains(&day(issued.not_after)) && err.contains("chorus cert issue"), "{err}");
    }
}
