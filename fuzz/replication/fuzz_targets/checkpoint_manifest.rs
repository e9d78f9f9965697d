//! Checkpoint manifests (`replication/shell/src/checkpoint.rs`) from
//! arbitrary bytes: what a replica decodes from the core's messages (a
//! donor's checkpoint reference) and from its own checkpoint folders.
//!
//! Fails on: a panic or abort in `Manifest::from_bytes`, `list`,
//! `is_complete`, `verify`; and on
//! - an accepted manifest with a name that is not a plain file name (empty,
//!   `.`, `..`, a `/` or a NUL, longer than 255 bytes), a file named like the
//!   manifest itself, or more than `FILES_MAX` files;
//! - an accepted manifest that does not round-trip: `to_bytes` must give back
//!   the bytes it was decoded from (bincode allows trailing bytes: a prefix)
//!   and decode to the same manifest;
//! - `list` disagreeing with `from_bytes` on the same bytes stored as a
//!   checkpoint folder's manifest (listed iff accepted and named like its
//!   folder);
//! - `verify` accepting a checkpoint whose files differ from the manifest.

#![no_main]

mod common;

use chorus_replication_shell::checkpoint::{self, Manifest, FILES_MAX, MANIFEST_FILE};
use libfuzzer_sys::fuzz_target;

fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
}

fuzz_target!(|data: &[u8]| {
    let root = common::scratch("checkpoint_manifest").join("root");
    let decoded = Manifest::from_bytes(data);
    if let Ok(m) = &decoded {
        assert!(plain(&m.name), "accepted checkpoint name {:?}", m.name);
        assert!(
            m.files.len() <= FILES_MAX,
            "accepted {} files",
            m.files.len()
        );
        for f in &m.files {
            assert!(
                plain(&f.name) && f.name != MANIFEST_FILE,
                "accepted file name {:?}",
                f.name
            );
        }
        let bytes = m.to_bytes();
        assert!(data.starts_with(&bytes), "to_bytes is not what was decoded");
        assert_eq!(
            &Manifest::from_bytes(&bytes).expect("re-encoded manifest decodes"),
            m
        );
        let _ = m.bytes(); // u64 sum: overflow checks are on
    }

    // The same bytes as a checkpoint folder's manifest, in a folder named
    // like the manifest when it has a usable name, else "cp".
    common::clear(&root);
    let folder = match &decoded {
        Ok(m) => m.name.clone(),
        Err(_) => "cp".to_string(),
    };
    let dir = root.join(&folder);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), data).unwrap();
    let listed = checkpoint::list(&root);
    match &decoded {
        Ok(m) => {
            assert_eq!(
                listed,
                vec![m.clone()],
                "list does not give the stored manifest"
            );
            assert!(
                checkpoint::is_complete(&root, m) == (m.to_bytes() == data),
                "is_complete"
            );
            // Its first file, if any, is written with other content: never verified.
            if let Some(f) = m.files.first() {
                std::fs::write(dir.join(&f.name), b"not the file").unwrap();
                let same = f.bytes == 12 && f.crc32c == crc32c::crc32c(b"not the file");
                if !same {
                    assert!(
                        checkpoint::verify(&root, m).is_err(),
                        "verify accepted a file that differs"
                    );
                }
            } else if m.to_bytes() == data {
                assert!(
                    checkpoint::verify(&root, m).is_ok(),
                    "an empty complete checkpoint does not verify"
                );
            }
        }
        Err(_) => assert!(
            listed.is_empty(),
            "list gives a manifest from_bytes refuses"
        ),
    }
});
