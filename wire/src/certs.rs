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
//!   to, from the SAN of a certificate that the handshake already verified.
//!
//! Assumes: the directory is private to the operator (the CA key is in it).
//! Why: one CA per cluster makes "unknown certificates are refused" a pure
//! TLS property (DESIGN §6): anything not signed by this CA fails the handshake.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::WireError;

/// The name every replica's certificate carries and every client verifies.
pub const SERVER_NAME: &str = "server.chorus";
/// SAN of the client certificate.
pub const CLIENT_NAME: &str = "client.chorus";
/// SAN of the admin certificate.
pub const ADMIN_NAME: &str = "admin.chorus";
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
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen_err)?;

    // CA first, with O_EXCL: two concurrent `init`s cannot both succeed.
    write_new(&dir.join("ca.key"), ca_key_pem.as_bytes(), 0o600).map_err(|e| exists_is_ca(e, dir))?;
    write_new(&dir.join("ca.pem"), ca.pem().as_bytes(), 0o644).map_err(|e| exists_is_ca(e, dir))?;

    let mut roles: Vec<Role> = (0..replicas).map(Role::Replica).collect();
    roles.push(Role::Client);
    roles.push(Role::Admin);
    for role in roles {
        let (cert_pem, key_pem) = issue_leaf(&ca, role)?;
        let stem = role.file_stem();
        write_new(&dir.join(format!("{stem}.key")), key_pem.as_bytes(), 0o600)?;
        write_new(&dir.join(format!("{stem}.pem")), cert_pem.as_bytes(), 0o644)?;
    }
    tracing::info!(dir = %dir.display(), replicas, "created cluster CA and certificates");
    Ok(())
}

/// Signs a leaf certificate for `role`; returns (certificate PEM, key PEM).
fn issue_leaf(ca: &CertifiedIssuer<'_, KeyPair>, role: Role) -> Result<(String, String), WireError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut names = vec![role.dns_name()];
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
    Ok(Identity { ca, chain, key })
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
}
