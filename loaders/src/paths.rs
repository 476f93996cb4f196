//! Where kiln keeps models: `$KILN_HOME` (default `~/.cache/kiln`), the
//! default model inside it, and how tests find the real model.

use std::path::{Path, PathBuf};

/// The default model's file name (SmolLM2-135M-Instruct Q4_1; `kiln pull`
/// or `scripts/fetch-model.sh` fetches it, see [`crate::hub`]).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$KILN_HOME`, else `~/.cache/kiln`.
pub fn kiln_home() -> PathBuf {
    match std::env::var_os("KILN_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln"),
    }
}

/// `home/models/`: where the model files of a kiln home live.
pub fn models_dir_in(home: &Path) -> PathBuf {
    home.join("models")
}

/// `$KILN_HOME/models/`.
pub fn models_dir() -> PathBuf {
    models_dir_in(&kiln_home())
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> PathBuf {
    models_dir().join(DEFAULT_MODEL_FILE)
}

/// The real model for tests: `$KILN_TEST_MODEL`, else the default model.
/// `None`, after printing why, when it is missing.
///
/// # Panics
/// When it is missing and `KILN_REQUIRE_MODEL=1` (CI sets it): in a test
/// that is the failure wanted, not a silent skip.
pub fn test_model(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("KILN_TEST_MODEL").map_or_else(default_model_path, PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("KILN_REQUIRE_MODEL").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: KILN_REQUIRE_MODEL=1 but {} is missing",
            path.display()
        );
    }
    eprintln!(
        "{test}: skipped: model not found, run `kiln pull` or scripts/fetch-model.sh ({})",
        path.display()
    );
    None
}
