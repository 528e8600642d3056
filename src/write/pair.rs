//! Two outputs written as one (`generate --masks`): the weights (one file, shards, or a
//! `--base` directory) and the masks file. Each tensor goes to one of them; both are
//! completed where they are staged, then moved into place together with interruptions held
//! off: both appear, or neither, and an existing masks file replaced with `--force` is put
//! back if the weights cannot be placed.

use std::fs;
use std::path::Path;

use super::safetensors::SafetensorsOutput;
use super::{Destination, Output, TensorSink, TwoStep, display, staging};
use crate::error::Error;
use crate::interrupt;

/// Where a tensor of the whole output goes: the index it has in one of the two outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Main(usize),
    Masks(usize),
}

/// The weights output and the masks file, with the route of every tensor.
pub struct PairedOutput {
    main: Box<dyn TwoStep>,
    masks: SafetensorsOutput,
    /// The masks file's destination, for putting back what `--force` replaces.
    masks_destination: Destination,
    /// By tensor index in the whole output.
    routes: Vec<Route>,
}

impl PairedOutput {
    pub fn new(
        main: Box<dyn TwoStep>,
        masks: SafetensorsOutput,
        masks_destination: Destination,
        routes: Vec<Route>,
    ) -> PairedOutput {
        PairedOutput {
            main,
            masks,
            masks_destination,
            routes,
        }
    }

    /// Moves both into place: an existing masks file aside, the new one in, then the
    /// weights; if the weights cannot be placed, the new masks file goes and the old one
    /// comes back. Renames only, in one directory each.
    fn place_both(&mut self) -> Result<(), Error> {
        let path = &self.masks_destination.path;
        let aside = match fs::symlink_metadata(path) {
            Err(_) => None,
            Ok(_) => {
                let moved = |e| {
                    Error::io(
                        format!(
                            "cannot move the replaced masks file '{}' aside",
                            display(path)
                        ),
                        e,
                    )
                };
                let dir = staging(0o700)
                    .tempdir_in(self.masks_destination.parent())
                    .map_err(moved)?
                    .keep();
                let old = dir.join("old");
                if let Err(e) = fs::rename(path, &old) {
                    let _ = fs::remove_dir(&dir);
                    return Err(moved(e));
                }
                Some((dir, old))
            }
        };
        let put_back = |aside: &Option<(std::path::PathBuf, std::path::PathBuf)>| {
            if let Some((dir, old)) = aside
                && fs::rename(old, path).is_ok()
            {
                let _ = fs::remove_dir(dir);
            }
        };
        if let Err(e) = self.masks.place() {
            put_back(&aside);
            return Err(e);
        }
        if let Err(e) = self.main.place() {
            let _ = fs::remove_file(path);
            put_back(&aside);
            return Err(e);
        }
        if let Some((dir, _)) = aside {
            fs::remove_dir_all(&dir).map_err(|e| {
                Error::io(
                    format!(
                        "cannot remove the replaced masks file in '{}'",
                        display(&dir)
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }
}

impl Output for PairedOutput {
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        match self.routes.get(index) {
            Some(&Route::Main(i)) => self.main.tensor(i),
            Some(&Route::Masks(i)) => self.masks.tensor(i),
            None => Err(Error::Internal(format!(
                "tensor {index} has no place in the output"
            ))),
        }
    }

    fn commit(mut self: Box<Self>) -> Result<(), Error> {
        self.main.finish()?;
        self.masks.finish()?;
        interrupt::uninterrupted(|| self.place_both())
    }

    fn bytes(&self) -> u64 {
        self.main.bytes() + self.masks.bytes()
    }
}

/// A [`TwoStep`] output used alone.
pub struct Alone(pub Box<dyn TwoStep>);

impl Output for Alone {
    fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
        self.0.tensor(index)
    }

    fn commit(mut self: Box<Self>) -> Result<(), Error> {
        self.0.finish()?;
        interrupt::uninterrupted(|| self.0.place())
    }

    fn bytes(&self) -> u64 {
        self.0.bytes()
    }
}

/// Whether `inner` lies inside `outer` (or is it), comparing absolute paths with `.` and
/// `..` resolved lexically.
pub fn is_within(inner: &Path, outer: &Path) -> bool {
    match (normalized(inner), normalized(outer)) {
        (Some(inner), Some(outer)) => inner.starts_with(outer),
        _ => false,
    }
}

/// `path` made absolute with `.` and `..` resolved lexically (symbolic links are not
/// followed: the paths compared may not exist yet).
fn normalized(path: &Path) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let absolute = std::path::absolute(path).ok()?;
    let mut out = std::path::PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// The path of `target` relative to the directory `from`, with `/` between its parts (as
/// recorded in provenance): `masks.safetensors`, `../masks/m.safetensors`. Both are made
/// absolute first; `None` when they share no root.
pub fn relative(target: &Path, from: &Path) -> Option<String> {
    let (target, from) = (normalized(target)?, normalized(from)?);
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return None;
    }
    let mut parts: Vec<String> = vec!["..".to_string(); f.len() - common];
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Dtype;
    use crate::records::Provenance;
    use crate::write::TensorInfo;

    /// A weights output whose move into place succeeds or fails as told.
    struct Weights {
        placed: bool,
        fails: bool,
    }

    impl Output for Weights {
        fn tensor(&self, index: usize) -> Result<TensorSink<'_>, Error> {
            Err(Error::Internal(format!("no tensor {index} here")))
        }
        fn commit(self: Box<Self>) -> Result<(), Error> {
            Ok(())
        }
        fn bytes(&self) -> u64 {
            0
        }
    }

    impl TwoStep for Weights {
        fn finish(&mut self) -> Result<(), Error> {
            Ok(())
        }
        fn place(&mut self) -> Result<(), Error> {
            if self.fails {
                return Err(Error::Usage("the weights cannot be placed".into()));
            }
            self.placed = true;
            Ok(())
        }
    }

    /// Commits a pair whose masks file replaces `old` (with --force) at `dir/m.safetensors`.
    fn commit_pair(dir: &Path, fails: bool) -> Result<(), Error> {
        let path = dir.join("m.safetensors");
        let destination = Destination { path, force: true };
        let provenance = Provenance {
            metadata: Vec::new(),
            document: serde_json::Value::Null,
        };
        let tensor = TensorInfo {
            name: "fc".into(),
            dtype: Dtype::Bool,
            shape: vec![2],
        };
        let masks = SafetensorsOutput::create(&destination, vec![tensor], Vec::new(), &provenance)?;
        let main = Box::new(Weights {
            placed: false,
            fails,
        });
        let pair = PairedOutput::new(main, masks, destination, vec![Route::Masks(0)]);
        let sink = pair.tensor(0)?;
        sink.write_at(0, &[1, 0])
            .map_err(|e| Error::io("write", e))?;
        sink.finish()?;
        Box::new(pair).commit()
    }

    fn hidden(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".eoi-"))
            .collect()
    }

    #[test]
    fn a_failure_to_place_the_weights_puts_the_old_masks_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        fs::write(&path, b"old masks").unwrap();
        let err = commit_pair(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("the weights cannot be placed"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old masks");
        assert_eq!(hidden(dir.path()), Vec::<String>::new());
        // Without an old file, a failure leaves none.
        fs::remove_file(&path).unwrap();
        assert!(commit_pair(dir.path(), true).is_err());
        assert!(!path.exists());
        assert_eq!(hidden(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn placed_weights_keep_the_new_masks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        fs::write(&path, b"old masks").unwrap();
        commit_pair(dir.path(), false).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[bytes.len() - 2..], &[1, 0]);
        assert_eq!(hidden(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn relative_paths_climb_and_descend() {
        let base = std::path::absolute("/data/run").unwrap();
        let r = |t: &str| relative(Path::new(t), &base);
        assert_eq!(
            r("/data/run/masks.safetensors").as_deref(),
            Some("masks.safetensors")
        );
        assert_eq!(
            r("/data/masks/m.safetensors").as_deref(),
            Some("../masks/m.safetensors")
        );
        assert_eq!(r("/data/run/./a/../m.st").as_deref(), Some("m.st"));
        assert!(is_within(
            Path::new("/data/run/x/m"),
            Path::new("/data/run")
        ));
        assert!(is_within(Path::new("/data/run"), Path::new("/data/run/")));
        assert!(!is_within(
            Path::new("/data/runs/m"),
            Path::new("/data/run")
        ));
        assert!(!is_within(
            Path::new("/data/run/../m"),
            Path::new("/data/run")
        ));
    }
}
