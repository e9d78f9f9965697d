//! Extended attributes: set, remove, get, list.
//!
//! Guarantees: Linux's `xattr_permission` rules (user.* only on regular files
//! and directories and with read/write permission, trusted.* for root only,
//! security.* readable by all and writable by root, as with commoncap and no
//! other security module), the XATTR_CREATE / XATTR_REPLACE flags, and the size
//! limits (ERANGE for bad names, E2BIG for large values). Namespaces other
//! than user, trusted and security are EOPNOTSUPP (system.* ACLs are not
//! supported). Per inode at most XATTRS_PER_INODE_MAX attributes and
//! XATTR_BYTES_PER_INODE_MAX bytes (ENOSPC beyond).

use crate::ctx::Ctx;
use crate::error::{errno, Fail, R};
use crate::keys::{named_key, prefix_range, split_named_key, Table};
use crate::ops::{Caller, FileKind, Ino, Reply, XATTR_NAME_MAX_BYTES, XATTR_VALUE_MAX_BYTES};
use crate::perm::{check_access, is_owner_or_root, is_root, MAY_READ, MAY_WRITE};
use crate::records::Inode;
use crate::state::load_inode;
use crate::view::View;

pub(crate) const XATTRS_PER_INODE_MAX: u32 = 1024;
pub(crate) const XATTR_BYTES_PER_INODE_MAX: u64 = 1024 * 1024;

enum Namespace {
    User,
    Trusted,
    Security,
}

/// The namespace of `name` (Linux `xattr_resolve_name`): ERANGE for an
/// empty or too long name, EOPNOTSUPP for an unsupported prefix, EINVAL for
/// nothing after the prefix or a NUL anywhere (a kernel ends names at the
/// first NUL, so only a hostile client sends one; stored, it would also
/// break the NUL-separated list of `listxattr`).
fn namespace(name: &[u8]) -> R<Namespace> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX_BYTES {
        return errno(libc::ERANGE);
    }
    let prefixes: [(&[u8], Namespace); 3] =
        [(b"user.", Namespace::User), (b"trusted.", Namespace::Trusted), (b"security.", Namespace::Security)];
    for (prefix, space) in prefixes {
        if let Some(suffix) = name.strip_prefix(prefix) {
            if suffix.is_empty() || suffix.contains(&0) {
                return errno(libc::EINVAL);
            }
            return Ok(space);
        }
    }
    errno(libc::EOPNOTSUPP)
}

/// Name rules alone (length, namespace), as `setxattr` checks them.
pub(crate) fn check_name(name: &[u8]) -> R<()> {
    namespace(name).map(drop)
}

/// `xattr_permission` for a read (`write == false`) or a write.
fn xattr_permission(node: &Inode, name: &[u8], write: bool, caller: &Caller) -> R<()> {
    match namespace(name)? {
        // commoncap's cap_inode_setxattr: writing security.* needs CAP_SYS_ADMIN.
        Namespace::Security if write && !is_root(caller) => errno(libc::EPERM),
        Namespace::Security => Ok(()),
        Namespace::Trusted => {
            if is_root(caller) {
                Ok(())
            } else {
                errno(if write { libc::EPERM } else { libc::ENODATA })
            }
        }
        Namespace::User => {
            if !matches!(node.kind, FileKind::File | FileKind::Dir) {
                return errno(if write { libc::EPERM } else { libc::ENODATA });
            }
            if write && node.is_dir() && node.perm & libc::S_ISVTX != 0 && !is_owner_or_root(node, caller) {
                return errno(libc::EPERM);
            }
            check_access(node, caller, if write { MAY_WRITE } else { MAY_READ })
        }
    }
}

pub(crate) fn setxattr(ctx: &mut Ctx, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> R<Reply> {
    if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
        return errno(libc::EINVAL);
    }
    let mut node = ctx.inode(ino)?;
    namespace(name)?;
    if value.len() > XATTR_VALUE_MAX_BYTES {
        return errno(libc::E2BIG);
    }
    xattr_permission(&node, name, true, ctx.caller)?;
    let key = named_key(ino, name);
    let existing = ctx.tx.get(Table::Xattrs, &key)?;
    match &existing {
        Some(_) if flags & libc::XATTR_CREATE != 0 => return errno(libc::EEXIST),
        None if flags & libc::XATTR_REPLACE != 0 => return errno(libc::ENODATA),
        _ => {}
    }
    let old_bytes = existing.as_ref().map_or(0, |v| (name.len() + v.len()) as u64);
    let new_bytes = (name.len() + value.len()) as u64;
    let count = node.xattr_count + existing.is_none() as u32;
    let bytes = node.xattr_bytes - old_bytes + new_bytes;
    if count > XATTRS_PER_INODE_MAX || bytes > XATTR_BYTES_PER_INODE_MAX {
        return errno(libc::ENOSPC);
    }
    node.xattr_count = count;
    node.xattr_bytes = bytes;
    ctx.tx.put(Table::Xattrs, key, value.to_vec());
    node.changed(ctx.now);
    ctx.save(&node);
    Ok(Reply::Ok)
}

pub(crate) fn removexattr(ctx: &mut Ctx, ino: Ino, name: &[u8]) -> R<Reply> {
    let mut node = ctx.inode(ino)?;
    namespace(name)?;
    xattr_permission(&node, name, true, ctx.caller)?;
    let key = named_key(ino, name);
    let Some(value) = ctx.tx.get(Table::Xattrs, &key)? else {
        return errno(libc::ENODATA);
    };
    assert!(node.xattr_count > 0);
    node.xattr_count -= 1;
    node.xattr_bytes -= (name.len() + value.len()) as u64;
    ctx.tx.delete(Table::Xattrs, key);
    node.changed(ctx.now);
    ctx.save(&node);
    Ok(Reply::Ok)
}

pub(crate) fn getxattr(view: &impl View, caller: &Caller, ino: Ino, name: &[u8]) -> R<Reply> {
    let node = load_inode(view, ino)?;
    xattr_permission(&node, name, false, caller)?;
    match view.get(Table::Xattrs, &named_key(ino, name))? {
        Some(value) => Ok(Reply::Data(value)),
        None => errno(libc::ENODATA),
    }
}

/// Names as a NUL-separated list (each name followed by a NUL), in name order;
/// trusted.* only for root, as ext4 lists them.
pub(crate) fn listxattr(view: &impl View, caller: &Caller, ino: Ino) -> R<Reply> {
    let node = load_inode(view, ino)?;
    let (from, to) = prefix_range(ino);
    let limit = node.xattr_count as usize + 1;
    let keys = view.scan_keys(Table::Xattrs, &from, &to, limit)?;
    assert_eq!(keys.len(), node.xattr_count as usize, "xattr count of inode {ino} is off");
    let mut list = Vec::new();
    for key in keys {
        let (_, name) = split_named_key(Table::Xattrs, &key).map_err(Fail::Store)?;
        if name.starts_with(b"trusted.") && !is_root(caller) {
            continue;
        }
        list.extend_from_slice(name);
        list.push(0);
    }
    Ok(Reply::Data(list))
}
