//! The content hash of a snapshot, shared by the backends that read real
//! files (cli, and lzc through it): BLAKE3 over every entry of a directory
//! tree in byte order of its path, each as its kind, relative path, mode,
//! size and then its bytes (a regular file) or its target (a symlink).
//! Two trees hash the same exactly when those agree, wherever they are
//! mounted. Symlinks are never followed; nothing outside the tree is read.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zdr_common::wire::{CheckLevel, ContentHash};

/// Read buffer; large reads keep the hash near the disk's speed.
const CHUNK: usize = 1 << 20;

/// What the walk read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHash {
    pub digest: String,
    pub entries: u64,
    pub bytes: u64,
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn kind(meta: &std::fs::Metadata) -> &'static [u8] {
    let t = meta.file_type();
    if t.is_dir() {
        b"d"
    } else if t.is_file() {
        b"f"
    } else if t.is_symlink() {
        b"l"
    } else {
        b"o"
    }
}

/// Every path below `root`, relative, sorted by bytes; directories before
/// what they hold.
fn paths(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    Ok(out)
}

/// Hashes the tree at `root` (the root's own mode is part of it).
pub fn hash_tree(root: &Path) -> std::io::Result<TreeHash> {
    let mut h = blake3::Hasher::new();
    h.update(b"zdr-content-v1\0");
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut buf = vec![0u8; CHUNK];
    let top = std::fs::symlink_metadata(root)?;
    field(&mut h, &top.mode().to_le_bytes());
    for rel in paths(root)? {
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        field(&mut h, kind(&meta));
        field(&mut h, rel.as_os_str().as_bytes());
        field(&mut h, &meta.mode().to_le_bytes());
        field(&mut h, &meta.size().to_le_bytes());
        if meta.file_type().is_file() {
            let mut f = std::fs::File::open(&path)?;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                bytes += n as u64;
            }
        } else if meta.file_type().is_symlink() {
            field(&mut h, std::fs::read_link(&path)?.as_os_str().as_bytes());
        }
        entries += 1;
    }
    Ok(TreeHash {
        digest: h.finalize().to_hex().to_string(),
        entries,
        bytes,
    })
}

/// A [`ContentHash`] at [`CheckLevel::FilesHashed`] from a walk.
pub fn files_hashed(tree: TreeHash, mount_ms: u64, read_ms: u64) -> ContentHash {
    ContentHash {
        level: CheckLevel::FilesHashed,
        digest: Some(tree.digest),
        files: tree.entries,
        bytes: tree.bytes,
        mount_ms,
        read_ms,
    }
}

/// A [`ContentHash`] at [`CheckLevel::BlocksRead`]: `bytes` read back.
pub fn blocks_read(bytes: u64, read_ms: u64) -> ContentHash {
    ContentHash {
        level: CheckLevel::BlocksRead,
        digest: None,
        files: 0,
        bytes,
        mount_ms: 0,
        read_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), b"hello").unwrap();
        std::fs::write(dir.join("top"), vec![7u8; 3 * CHUNK + 5]).unwrap();
        symlink("a/b/f", dir.join("link")).unwrap();
    }

    fn hash(dir: &Path) -> TreeHash {
        hash_tree(dir).unwrap()
    }

    #[test]
    fn equal_trees_hash_equal_wherever_they_are() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(x.path());
        tree(y.path());
        let (hx, hy) = (hash(x.path()), hash(y.path()));
        assert_eq!(hx, hy);
        assert_eq!(hx.entries, 5, "a, a/b, a/b/f, link, top");
        assert_eq!(hx.bytes, 5 + 3 * CHUNK as u64 + 5);
    }

    #[test]
    fn every_part_of_an_entry_changes_the_hash() {
        let base = tempfile::tempdir().unwrap();
        tree(base.path());
        let before = hash(base.path()).digest;
        type Change = (&'static str, fn(&Path));
        let changes: [Change; 5] = [
            ("one byte", |d| {
                let mut v = std::fs::read(d.join("top")).unwrap();
                v[CHUNK + 1] ^= 1;
                std::fs::write(d.join("top"), v).unwrap();
            }),
            ("a mode", |d| {
                std::fs::set_permissions(d.join("a/b/f"), std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }),
            ("a symlink target", |d| {
                std::fs::remove_file(d.join("link")).unwrap();
                symlink("top", d.join("link")).unwrap();
            }),
            ("a name", |d| {
                std::fs::rename(d.join("a/b/f"), d.join("a/b/g")).unwrap();
            }),
            ("an empty file", |d| {
                std::fs::write(d.join("a/empty"), b"").unwrap();
            }),
        ];
        for (what, change) in changes {
            let d = tempfile::tempdir().unwrap();
            tree(d.path());
            assert_eq!(hash(d.path()).digest, before, "same tree before {what}");
            change(d.path());
            assert_ne!(hash(d.path()).digest, before, "{what} went unnoticed");
        }
    }

    #[test]
    fn moving_bytes_between_files_changes_the_hash() {
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(x.path().join("a"), b"ab").unwrap();
        std::fs::write(x.path().join("b"), b"c").unwrap();
        std::fs::write(y.path().join("a"), b"a").unwrap();
        std::fs::write(y.path().join("b"), b"bc").unwrap();
        assert_ne!(hash(x.path()).digest, hash(y.path()).digest);
    }
}
