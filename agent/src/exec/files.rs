//! A task's files ([`TaskFile`]), placed in its sandbox before it starts,
//! as Mesos's fetcher places URIs: each is an artifact the agent has
//! fetched from the master's store, copied into place (never linked: the
//! task may change its copy, not the store's), or unpacked there if it is
//! a tar archive (gzip-compressed or not). Nothing lands outside the
//! sandbox: paths are plain relative names ([`stoa_proto::SandboxPath`]),
//! and archive entries that would escape, or links, are refused.

use std::fs::File;
use std::io::{BufReader, Read as _, Seek as _};
use std::path::Path;
use stoa_proto::{Digest, TaskFile};

/// Places every file of a task into `sandbox` from `store`, the agent's
/// fetched artifacts (`<store>/<hex sha256>`); the error says which one
/// failed and why.
pub fn place(files: &[TaskFile], store: &Path, sandbox: &Path) -> Result<(), String> {
    for file in files {
        let source = stored(store, file.artifact);
        let target = sandbox.join(file.path.as_str());
        let placed = if file.extract {
            unpack(&source, &target)
        } else {
            copy(&source, &target)
        };
        placed.map_err(|e| {
            let verb = if file.extract { "unpack" } else { "place" };
            format!(
                "cannot {verb} {} ({}): {e}",
                file.path.as_str(),
                file.artifact
            )
        })?;
    }
    Ok(())
}

fn stored(store: &Path, digest: Digest) -> std::path::PathBuf {
    store.join(hex::encode(digest.0))
}

fn copy(source: &Path, target: &Path) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(source, target).map(|_| ())
}

/// Unpacks a tar archive, gzip-compressed or not, into the directory
/// `target`. Entries other than files and directories (links, devices)
/// are refused; the `tar` crate refuses entries whose path leaves
/// `target`.
fn unpack(source: &Path, target: &Path) -> std::io::Result<()> {
    let mut file = File::open(source)?;
    let mut magic = [0u8; 2];
    let gzip = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    file.rewind()?;
    std::fs::create_dir_all(target)?;
    let reader: Box<dyn std::io::Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(std::io::Error::other(format!(
                "{} is a {kind:?}: only files and directories are unpacked",
                entry.path()?.display()
            )));
        }
        if !entry.unpack_in(target)? {
            return Err(std::io::Error::other(format!(
                "{} would land outside its directory",
                entry.path()?.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &Path, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        std::fs::create_dir_all(store).expect("store");
        std::fs::write(stored(store, digest), bytes).expect("write");
        digest
    }

    fn tar_of(entries: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, *data)
                .expect("append");
        }
        let bytes = builder.into_inner().expect("tar");
        if !gzip {
            return bytes;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).expect("gzip");
        gz.finish().expect("gzip")
    }

    fn file(path: &str, artifact: Digest, extract: bool) -> TaskFile {
        TaskFile {
            path: path.parse().expect("a sandbox path"),
            artifact,
            extract,
        }
    }

    #[test]
    fn files_are_copied_and_archives_unpacked_inside_the_sandbox() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let sandbox = tmp.path().join("sandbox");
        std::fs::create_dir(&sandbox).expect("sandbox");
        let notes = put(&store, b"notes");
        let tgz = put(
            &store,
            &tar_of(&[("a.txt", b"A"), ("sub/b.txt", b"B")], true),
        );
        let plain = put(&store, &tar_of(&[("c.txt", b"C")], false));
        place(
            &[
                file("conf/notes.txt", notes, false),
                file("data", tgz, true),
                file("more", plain, true),
            ],
            &store,
            &sandbox,
        )
        .expect("placed");
        let read = |p: &str| std::fs::read_to_string(sandbox.join(p)).expect(p);
        assert_eq!(read("conf/notes.txt"), "notes");
        assert_eq!(read("data/a.txt"), "A");
        assert_eq!(read("data/sub/b.txt"), "B");
        assert_eq!(read("more/c.txt"), "C");
        // A copy: changing it leaves the store's bytes as they were.
        std::fs::write(sandbox.join("conf/notes.txt"), "changed").expect("write");
        assert_eq!(
            std::fs::read(stored(&store, notes)).expect("store"),
            b"notes"
        );
    }

    #[test]
    fn escaping_archives_and_missing_artifacts_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let sandbox = tmp.path().join("sandbox");
        std::fs::create_dir(&sandbox).expect("sandbox");
        // An entry named with `..`, written raw (the builder refuses it).
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..11].copy_from_slice(b"../evil.txt");
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(&[b'x'; 512]);
        bytes.extend_from_slice(&[0; 1024]);
        let evil = put(&store, &bytes);
        let err = place(&[file("d", evil, true)], &store, &sandbox).expect_err("escaped");
        assert!(err.contains("cannot unpack d"), "{err}");
        assert!(!tmp.path().join("evil.txt").exists());
        let missing = Digest::of(b"nowhere");
        let err = place(&[file("f", missing, false)], &store, &sandbox).expect_err("missing");
        assert!(err.contains("cannot place f"), "{err}");
    }

    #[test]
    fn sandbox_paths_are_plain_relative_names() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./a",
            "a/./b",
            "a\0b",
        ] {
            assert!(bad.parse::<stoa_proto::SandboxPath>().is_err(), "{bad:?}");
        }
        for good in ["a", "conf/app.toml", "data/"] {
            assert!(good.parse::<stoa_proto::SandboxPath>().is_ok(), "{good:?}");
        }
    }
}
