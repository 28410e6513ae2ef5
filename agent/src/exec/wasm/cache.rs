//! Compiled code on disk, so a restarted executor (or a second one) does
//! not compile an artifact again.
//!
//! An entry is named by the artifact's digest and a hash of everything in
//! the engine that compiled code depends on (wasmtime's version and
//! configuration), so code from another engine is never loaded. Each entry
//! carries the sha256 of its bytes; a corrupt or truncated entry fails that
//! check, is deleted, and the artifact is compiled again. The directory is
//! kept under a size cap by evicting the least recently used entries (file
//! modification times, refreshed on every hit).

use sha2::{Digest as _, Sha256};
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use stoa_proto::Digest;
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

/// Compiled code: a component or a core module, which wasmtime compiles,
/// serializes and loads alike.
pub trait Code: Sized {
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self>;
    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
    /// Loads code from the on-disk cache.
    fn load(engine: &Engine, code: &[u8]) -> wasmtime::Result<Self>;
}

// SAFETY (both `load`s): wasmtime can only load compiled code unsafely,
// because it runs it without verifying it. `code` comes from
// [`CompiledCache::get`], which returns only bytes that were written by
// `serialize` on an engine with the same compatibility hash (it is in the
// entry's name, and wasmtime checks its own header too) and that still match
// the checksum written with them: the code as compiled, not a corrupted or
// foreign file. The cache directory belongs to the agent; tasks cannot
// reach it.
impl Code for Component {
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        Component::new(engine, bytes)
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Component::serialize(self)
    }
    #[allow(unsafe_code)]
    fn load(engine: &Engine, code: &[u8]) -> wasmtime::Result<Self> {
        unsafe { Component::deserialize(engine, code) }
    }
}

impl Code for Module {
    fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Self> {
        Module::new(engine, bytes)
    }
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Module::serialize(self)
    }
    #[allow(unsafe_code)]
    fn load(engine: &Engine, code: &[u8]) -> wasmtime::Result<Self> {
        unsafe { Module::deserialize(engine, code) }
    }
}

/// Where [`load_or_compile`]'s code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Loaded,
    Compiled,
    /// Compiled again because the cached entry was corrupt.
    Rebuilt,
}

/// Code for `digest`: loaded from `cache` when it holds a sound entry for
/// `engine`, otherwise compiled from `bytes` (and cached). The error is
/// the compiler's, for a binary that is not valid wasm.
pub fn load_or_compile<C: Code>(
    cache: Option<&CompiledCache>,
    engine: &Engine,
    digest: Digest,
    bytes: &[u8],
) -> Result<(C, Origin), String> {
    let mut origin = Origin::Compiled;
    if let Some(cache) = cache {
        match cache.get(engine, digest) {
            Lookup::Hit(code) => match C::load(engine, &code) {
                Ok(c) => return Ok((c, Origin::Loaded)),
                Err(e) => {
                    tracing::warn!(%digest, error = format!("{e:#}"), "cached code does not load; compiling again");
                }
            },
            Lookup::Corrupt => {
                origin = Origin::Rebuilt;
                tracing::warn!(%digest, "cached code failed its checksum; compiling again");
            }
            Lookup::Miss => {}
        }
    }
    let compiled = C::compile(engine, bytes).map_err(|e| format!("{e:#}"))?;
    if let Some(cache) = cache {
        match compiled.serialize() {
            Ok(code) => {
                if let Err(e) = cache.put(engine, digest, &code) {
                    tracing::warn!(%digest, error = %e, "cannot cache compiled code");
                }
            }
            Err(e) => {
                tracing::warn!(%digest, error = format!("{e:#}"), "cannot serialize compiled code")
            }
        }
    }
    Ok((compiled, origin))
}

/// Default size cap of the compiled-code cache.
pub const DEFAULT_CACHE_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Entries removed to keep the cache under `max_bytes`.
    evicted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// There was an entry, but its bytes did not match its checksum; it has
    /// been removed.
    Corrupt,
}

impl CompiledCache {
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(CompiledCache {
            dir,
            max_bytes,
            evicted: Default::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries evicted so far to keep the cache under its size.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The entry's path for `digest` compiled by `engine`.
    pub fn path(&self, engine: &Engine, digest: Digest) -> PathBuf {
        let mut h = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let name = format!("{}-{:016x}.cwasm", hex::encode(digest.0), h.finish());
        self.dir.join(name)
    }

    /// Serialized code for `digest`, verified against its checksum.
    pub fn get(&self, engine: &Engine, digest: Digest) -> Lookup {
        let path = self.path(engine, digest);
        let Ok(bytes) = std::fs::read(&path) else {
            return Lookup::Miss;
        };
        let sum = std::fs::read_to_string(sum_path(&path)).unwrap_or_default();
        if sum.trim() != hex::encode(Sha256::digest(&bytes)) {
            self.remove(&path);
            return Lookup::Corrupt;
        }
        // Refresh the entry's place in the eviction order.
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Lookup::Hit(bytes)
    }

    /// Stores serialized code. Written to a temporary name and renamed, so
    /// a reader never sees half an entry; the checksum goes first, so an
    /// entry without one is never trusted.
    pub fn put(&self, engine: &Engine, digest: Digest, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(engine, digest);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(sum_path(&path), hex::encode(Sha256::digest(bytes)))?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        self.evict(&path);
        Ok(())
    }

    /// Removes least recently used entries (never `keep`) until the cache
    /// is under its cap.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path != keep {
                self.remove(&path);
                self.evicted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                total = total.saturating_sub(len);
            }
        }
    }

    fn remove(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(sum_path(path));
    }
}

fn sum_path(path: &Path) -> PathBuf {
    path.with_extension("sha256")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_entries_go_first_when_over_the_cap() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = CompiledCache::new(tmp.path(), 2_500).expect("cache");
        let engine = Engine::default();
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        cache.put(&engine, a, &[1; 1000]).expect("put a");
        cache.put(&engine, b, &[2; 1000]).expect("put b");
        for (d, age) in [(a, 30), (b, 60)] {
            let f = std::fs::File::options()
                .append(true)
                .open(cache.path(&engine, d))
                .expect("open");
            f.set_modified(old + std::time::Duration::from_secs(60 - age))
                .expect("age");
        }
        // `a` is used, so `b` is now the least recently used.
        assert_eq!(cache.get(&engine, a), Lookup::Hit(vec![1; 1000]));
        cache.put(&engine, c, &[3; 1000]).expect("put c");
        assert_eq!(cache.get(&engine, b), Lookup::Miss);
        assert_eq!(cache.get(&engine, a), Lookup::Hit(vec![1; 1000]));
        assert_eq!(cache.get(&engine, c), Lookup::Hit(vec![3; 1000]));
    }

    #[test]
    fn an_entry_without_its_checksum_is_not_trusted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = CompiledCache::new(tmp.path(), 1 << 20).expect("cache");
        let engine = Engine::default();
        let d = Digest::of(b"x");
        cache.put(&engine, d, b"code").expect("put");
        std::fs::remove_file(sum_path(&cache.path(&engine, d))).expect("rm");
        assert_eq!(cache.get(&engine, d), Lookup::Corrupt);
        assert_eq!(cache.get(&engine, d), Lookup::Miss);
    }
}
