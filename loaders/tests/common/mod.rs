//! Helpers shared by the loader tests.

#![allow(dead_code)]

pub mod raw;

use std::path::PathBuf;

/// The real model: `KILN_TEST_MODEL`, else
/// `${KILN_HOME:-$HOME/.cache/kiln}/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
/// `None` (after printing why) when it is missing, unless
/// `KILN_REQUIRE_MODEL=1`, which turns a missing model into a failure.
pub fn test_model() -> Option<PathBuf> {
    let path = match std::env::var_os("KILN_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("KILN_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let home = std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_default();
                    home.join(".cache/kiln")
                });
            home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if path.is_file() {
        return Some(path);
    }
    let require = std::env::var("KILN_REQUIRE_MODEL").is_ok_and(|v| v == "1");
    assert!(
        !require,
        "KILN_REQUIRE_MODEL=1 but {} is missing",
        path.display()
    );
    eprintln!(
        "skipped: model not found, run scripts/fetch-model.sh ({})",
        path.display()
    );
    None
}

/// A fresh empty directory under the target's tmp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-loaders-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
