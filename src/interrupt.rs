//! What an interruption must clean up: a registry of the hidden temporary files and
//! directories (`.eoi-*`) that outputs are staged in. Writers register each one when they
//! create it and drop the registration when it is committed or removed. The binary's signal
//! handler (SIGINT, SIGTERM) calls [`clean_up_then`], which removes whatever is still
//! registered before the process exits, so an interrupted run leaves nothing half-written.
//!
//! The library never exits the process itself: the caller hands [`clean_up_then`] the exit.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

struct Registry {
    next: u64,
    paths: BTreeMap<u64, PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    paths: BTreeMap::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves the map consistent (every update is one call),
    // so a poisoned lock is still usable: cleanup must work most of all after a failure.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A staged file or directory, registered for removal on interruption until this is dropped.
#[derive(Debug)]
#[must_use = "the path is unregistered as soon as the guard is dropped"]
pub struct Staged {
    id: u64,
}

/// Registers `path` (a file or a directory) for removal if the run is interrupted.
pub fn stage(path: &Path) -> Staged {
    let mut registry = registry();
    let id = registry.next;
    registry.next += 1;
    registry.paths.insert(id, path.to_path_buf());
    Staged { id }
}

impl Drop for Staged {
    fn drop(&mut self) {
        registry().paths.remove(&self.id);
    }
}

/// Creates a temporary file or directory with `create` and registers the path `path_of`
/// gives, both while cleanup is held off: an interruption comes either before the path
/// exists or after it is registered, and then removes it. `create` must not stage anything.
pub fn create_staged<T>(
    create: impl FnOnce() -> io::Result<T>,
    path_of: impl FnOnce(&T) -> &Path,
) -> io::Result<(T, Staged)> {
    let mut registry = registry();
    let made = create()?;
    let id = registry.next;
    registry.next += 1;
    registry.paths.insert(id, path_of(&made).to_path_buf());
    Ok((made, Staged { id }))
}

/// The paths registered now, oldest first.
pub fn staged() -> Vec<PathBuf> {
    registry().paths.values().cloned().collect()
}

/// Runs `f` with cleanup held off: an interruption that arrives meanwhile waits until `f`
/// returns, so a sequence of renames that moves an output into place (and an old one aside)
/// is never cut half-way, which could lose both. `f` must not create or drop a [`Staged`].
pub fn uninterrupted<T>(f: impl FnOnce() -> T) -> T {
    let _held = registry();
    f()
}

/// Removes every registered path, then calls `then` (which should exit the process) while
/// still holding the registry, so no new temporary file can be staged or committed in between.
pub fn clean_up_then<T>(then: impl FnOnce() -> T) -> T {
    let registry = registry();
    for path in registry.paths.values() {
        // Best effort: an interrupted run has no one left to report a failure to, and a
        // path already gone (renamed into place just before) is not an error.
        let _ = remove(path);
    }
    then()
}

/// Removes a file or a directory tree. Workers may still be creating files inside a staged
/// directory while it is removed, so a directory that is not empty yet is tried again; once
/// it is gone nothing can be created in it.
fn remove(path: &Path) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        let result = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => Err(e),
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
        };
        attempts += 1;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempts >= 100 => return Err(e),
            Err(_) => std::thread::yield_now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_last_as_long_as_their_guards() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let guard_a = stage(&a);
        let guard_b = stage(&b);
        let now = staged();
        assert!(now.contains(&a) && now.contains(&b));
        drop(guard_a);
        let now = staged();
        assert!(!now.contains(&a) && now.contains(&b));
        drop(guard_b);
        assert!(!staged().contains(&b));
    }

    #[test]
    fn remove_takes_files_and_trees_and_ignores_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        let tree = dir.path().join("t");
        fs::create_dir_all(tree.join("inner")).unwrap();
        fs::write(tree.join("inner").join("g"), b"y").unwrap();
        remove(&file).unwrap();
        remove(&tree).unwrap();
        remove(&dir.path().join("never-was")).unwrap();
        assert!(!file.exists() && !tree.exists());
    }
}
