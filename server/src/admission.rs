//! What a client certificate may claim: requests are mapped before they are
//! ordered (commands) or answered (queries), in both server modes.
//!
//! Guarantees:
//! - Root squash (NFS `root_squash`): unless the connection's certificate
//!   may act as root ([`chorus_wire::certs::CertInfo::may_act_as_root`]: the
//!   cluster's own `client` certificate, per-host certificates issued with
//!   `--trust-root`, the admin certificate), uid 0 in a request's caller
//!   becomes [`NOBODY`], and so do gid 0 and group 0 among its groups. Every
//!   permission check (in `chorus-fs`) then sees nobody, and files it
//!   creates are owned by nobody.
//! - The mapping is a pure function of the certificate and the request, so a
//!   retry of the same request (same session and seq) is mapped to the same
//!   bytes, and every replica applies what the leader ordered.
//! - Bytes that do not decode are passed on unchanged (the state machine
//!   answers EINVAL, the same on every replica); nothing here panics on input.
//!
//! Assumes: the certificate was verified in the handshake (chorus-wire).
//! Why here and not in the file system: the file system sees the log; which
//! connection a command came from is known only where it enters.

use chorus_fs::ops::{Caller, Request};
use chorus_replication::Operation;
use chorus_wire::certs::CertInfo;

/// uid and gid a squashed root becomes (`nobody`, `nogroup`).
pub const NOBODY: u32 = 65534;

/// Maps uid 0, gid 0 and group 0 of `caller` to [`NOBODY`]; true if it changed.
pub fn squash(caller: &mut Caller) -> bool {
    let mut changed = false;
    for id in std::iter::once(&mut caller.uid).chain(std::iter::once(&mut caller.gid)).chain(caller.groups.iter_mut()) {
        if *id == 0 {
            *id = NOBODY;
            changed = true;
        }
    }
    changed
}

/// Applies what a certificate that may (or may not) act as root may claim
/// to a decoded request; true if it changed.
pub fn admit_request(may_act_as_root: bool, request: &mut Request) -> bool {
    if may_act_as_root {
        return false;
    }
    match request {
        Request::Mutate { caller, .. } | Request::Query { caller, .. } => squash(caller),
    }
}

/// The same for an encoded request of the replicated protocol (the hook the
/// replication shell calls for every client request, see
/// `chorus_replication_shell::node::NodeConfig::admit`).
pub fn admit_operation(cert: &CertInfo, operation: &mut Operation) {
    if cert.may_act_as_root() {
        return;
    }
    let bytes = match operation {
        Operation::Write(bytes) | Operation::Read(bytes) => bytes,
        Operation::Register => return,
    };
    let Ok(mut request) = crate::machine::decode_request(bytes) else { return };
    if admit_request(false, &mut request) {
        // Re-encoding a decoded request cannot grow it past the bound: the
        // same fields, smaller or equal ids in varint.
        if let Ok(encoded) = crate::machine::encode_request(&request) {
            *bytes = encoded;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_fs::ops::{Op, Query, ROOT_INO};

    fn cert(trust_root: bool) -> CertInfo {
        CertInfo { role: Some(chorus_wire::Role::Client), host: Some("web-1".into()), trust_root, fingerprint: "00".repeat(32) }
    }

    #[test]
    fn root_is_squashed_unless_trusted() {
        let mut c = Caller { uid: 0, gid: 0, pid: 7, groups: vec![0, 5] };
        assert!(squash(&mut c));
        assert_eq!(c, Caller { uid: NOBODY, gid: NOBODY, pid: 7, groups: vec![NOBODY, 5] });
        let mut user = Caller { uid: 1000, gid: 1000, pid: 1, groups: vec![27] };
        assert!(!squash(&mut user));

        let query = Request::Query { caller: Caller::root(), query: Query::GetAttr { ino: ROOT_INO } };
        let op = Request::Mutate { caller: Caller::root(), op: Op::Mkdir { parent: ROOT_INO, name: b"d".to_vec(), mode: 0o755, umask: 0 } };
        for request in [query, op] {
            let bytes = crate::machine::encode_request(&request).unwrap();
            for (trusted, operation) in [(true, Operation::Read(bytes.clone())), (false, Operation::Write(bytes.clone()))] {
                let mut operation = operation;
                admit_operation(&cert(trusted), &mut operation);
                let (Operation::Read(out) | Operation::Write(out)) = &operation else { unreachable!() };
                let decoded = crate::machine::decode_request(out).unwrap();
                let (Request::Mutate { caller, .. } | Request::Query { caller, .. }) = decoded;
                assert_eq!(caller.uid, if trusted { 0 } else { NOBODY });
            }
        }
        // Garbage passes unchanged (the machine refuses it), registrations too.
        let mut garbage = Operation::Write(vec![0xff; 9]);
        admit_operation(&cert(false), &mut garbage);
        assert_eq!(garbage, Operation::Write(vec![0xff; 9]));
        let mut register = Operation::Register;
        admit_operation(&cert(false), &mut register);
        assert_eq!(register, Operation::Register);
        // The admin certificate is trusted.
        let admin = CertInfo { role: Some(chorus_wire::Role::Admin), host: None, trust_root: false, fingerprint: String::new() };
        assert!(admin.may_act_as_root());
    }
}
