//! Helpers shared by the loader tests.

#![allow(dead_code)]

pub mod raw;

use std::path::PathBuf;

/// The real model, or `None` after a visible skip (see
/// `kiln_loaders::paths::test_model`).
pub fn test_model() -> Option<PathBuf> {
    kiln_loaders::paths::test_model("loader tests")
}

/// A fresh empty directory under the target's tmp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-loaders-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
