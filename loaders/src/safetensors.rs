//! safetensors: Hugging Face's tensor file format, single or sharded.
//!
//! Layout (github.com/huggingface/safetensors, "Format"): a u64 little-endian
//! header length N, N bytes of UTF-8 JSON, then the byte buffer. The JSON is
//! an object of `name → {"dtype", "shape", "data_offsets": [begin, end]}`
//! (offsets relative to the buffer) plus an optional `__metadata__` object
//! of strings. Like the reference implementation we insist the tensors tile
//! the buffer exactly: no overlaps, no holes, nothing left over.
//!
//! Sharded checkpoints list `tensor → shard file` in
//! `model.safetensors.index.json`; [`SafetensorsModel`] opens either form.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_kernels::DType;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value as Json;

use crate::error::{ErrorKind, LoadError};
use crate::weights::{Storage, Weight, WeightMap};

/// The reference implementation refuses headers above 100 MB; so do we, so
/// a lying length cannot make us parse (and allocate for) gigabytes of JSON.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The name sharded checkpoints give their index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// safetensors element types (the byte-sized ones; sub-byte F4/F6 are
/// refused as unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SafeDtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl SafeDtype {
    const ALL: [(SafeDtype, &'static str, usize, Option<DType>); 16] = [
        (SafeDtype::Bool, "BOOL", 1, None),
        (SafeDtype::U8, "U8", 1, None),
        (SafeDtype::I8, "I8", 1, Some(DType::I8)),
        (SafeDtype::F8E5M2, "F8_E5M2", 1, None),
        (SafeDtype::F8E4M3, "F8_E4M3", 1, None),
        (SafeDtype::F8E8M0, "F8_E8M0", 1, None),
        (SafeDtype::I16, "I16", 2, Some(DType::I16)),
        (SafeDtype::U16, "U16", 2, None),
        (SafeDtype::F16, "F16", 2, Some(DType::F16)),
        (SafeDtype::BF16, "BF16", 2, Some(DType::BF16)),
        (SafeDtype::I32, "I32", 4, Some(DType::I32)),
        (SafeDtype::U32, "U32", 4, None),
        (SafeDtype::F32, "F32", 4, Some(DType::F32)),
        (SafeDtype::F64, "F64", 8, Some(DType::F64)),
        (SafeDtype::I64, "I64", 8, Some(DType::I64)),
        (SafeDtype::U64, "U64", 8, None),
    ];

    fn row(self) -> (SafeDtype, &'static str, usize, Option<DType>) {
        // ALL lists every variant, so the fallback is never taken.
        Self::ALL
            .into_iter()
            .find(|r| r.0 == self)
            .unwrap_or((self, "?", 1, None))
    }

    /// The dtype spelled as in a header (`"BF16"`).
    pub fn from_name(name: &str) -> Option<SafeDtype> {
        Self::ALL.into_iter().find(|r| r.1 == name).map(|r| r.0)
    }

    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        self.row().2
    }

    /// The kiln dtype with the same layout, if there is one.
    pub fn to_dtype(self) -> Option<DType> {
        self.row().3
    }
}

impl fmt::Display for SafeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct SafeTensorInfo {
    pub name: String,
    pub dtype: SafeDtype,
    /// Row-major, last dimension contiguous (same as kiln's order).
    pub shape: Vec<usize>,
    /// `[begin, end)` in the byte buffer after the header.
    pub data_offsets: (usize, usize),
}

impl SafeTensorInfo {
    pub fn byte_size(&self) -> usize {
        self.data_offsets.1 - self.data_offsets.0
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One open `.safetensors` file.
pub struct SafetensorsFile {
    name: String,
    storage: Arc<Storage>,
    data_start: usize,
    metadata: BTreeMap<String, String>,
    tensors: Vec<SafeTensorInfo>,
    index: HashMap<String, usize>,
}

impl SafetensorsFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile, LoadError> {
        let path = path.as_ref();
        SafetensorsFile::parse(Arc::new(Storage::map(path)?), path.display().to_string())
    }

    /// Parses bytes already in memory; `name` stands for the file in errors.
    pub fn from_bytes(
        bytes: impl Into<Arc<[u8]>>,
        name: impl Into<String>,
    ) -> Result<SafetensorsFile, LoadError> {
        SafetensorsFile::parse(Arc::new(Storage::Owned(bytes.into())), name.into())
    }

    fn parse(storage: Arc<Storage>, name: String) -> Result<SafetensorsFile, LoadError> {
        let (data_start, metadata, tensors) = match parse_header(&storage) {
            Ok(parts) => parts,
            Err(e) => return Err(e.in_file(name)),
        };
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            name,
            storage,
            data_start,
            metadata,
            tensors,
            index,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `__metadata__` strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor entries in data order.
    pub fn tensors(&self) -> &[SafeTensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.tensors.get(*self.index.get(name)?)
    }

    pub fn file_size(&self) -> usize {
        self.storage.len()
    }

    pub fn tensor_data(&self, name: &str) -> Result<&[u8], LoadError> {
        let not_found =
            || LoadError::new(ErrorKind::TensorNotFound(name.to_string())).in_file(&self.name);
        let t = self.tensor(name).ok_or_else(not_found)?;
        self.storage.get(self.range(t)).ok_or_else(not_found)
    }

    /// Every tensor as a [`WeightMap`]; a dtype kiln has no equivalent for
    /// (U8, BOOL, F8, unsigned ints) is an error naming the tensor.
    pub fn weights(&self) -> Result<WeightMap, LoadError> {
        let mut map = WeightMap::new();
        self.add_weights(&mut map)?;
        Ok(map)
    }

    fn add_weights(&self, map: &mut WeightMap) -> Result<(), LoadError> {
        for t in &self.tensors {
            let fail = |kind| {
                LoadError::new(kind)
                    .tensor(t.name.clone())
                    .in_file(&self.name)
            };
            let dtype = t
                .dtype
                .to_dtype()
                .ok_or_else(|| fail(ErrorKind::UnsupportedDtype(t.dtype.name().into())))?;
            let w = Weight::new(dtype, t.shape.clone(), self.storage.clone(), self.range(t));
            map.insert(t.name.clone(), w)
                .map_err(|e| e.in_file(&self.name))?;
        }
        Ok(())
    }

    /// Checked at parse time to lie inside the file.
    fn range(&self, t: &SafeTensorInfo) -> std::ops::Range<usize> {
        self.data_start + t.data_offsets.0..self.data_start + t.data_offsets.1
    }
}

/// The header's top-level object, duplicates kept (serde_json's own map
/// would silently keep the last of two equal names).
struct Entries(Vec<(String, Json)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Json>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

type Parsed = (usize, BTreeMap<String, String>, Vec<SafeTensorInfo>);

fn parse_header(buf: &[u8]) -> Result<Parsed, LoadError> {
    let file_len = buf.len() as u64;
    let len_bytes: [u8; 8] = buf
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            LoadError::new(ErrorKind::Truncated {
                what: "header length",
                needed: 8,
                available: file_len,
            })
            .at(0)
        })?;
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_HEADER_BYTES {
        return Err(LoadError::new(ErrorKind::HeaderTooLarge {
            len,
            max: MAX_HEADER_BYTES,
        })
        .at(0));
    }
    // len <= 100 MB, so it fits a usize and 8 + len cannot overflow.
    let data_start = 8 + len as usize;
    let header = buf
        .get(8..data_start)
        .ok_or_else(|| LoadError::new(ErrorKind::HeaderPastEnd { len, file_len }).at(0))?;
    let data_len = buf.len() - data_start;

    if header.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(LoadError::new(ErrorKind::HeaderNotObject).at(8));
    }
    let Entries(entries) = serde_json::from_slice(header)
        .map_err(|e| LoadError::new(ErrorKind::HeaderJson(e.to_string())).at(8))?;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    let mut seen = BTreeSet::new();
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(LoadError::new(ErrorKind::DuplicateTensor)
                .at(8)
                .tensor(name));
        }
        if name == "__metadata__" {
            metadata = parse_metadata(value).map_err(|e| e.at(8))?;
        } else {
            let info = parse_entry(&name, &value).map_err(|e| e.at(8).tensor(name))?;
            tensors.push(info);
        }
    }
    check_tiling(&mut tensors, data_start, data_len)?;
    Ok((data_start, metadata, tensors))
}

fn parse_metadata(value: Json) -> Result<BTreeMap<String, String>, LoadError> {
    let bad = || {
        LoadError::new(ErrorKind::BadEntry(
            "__metadata__ must be an object of strings".into(),
        ))
    };
    let Json::Object(map) = value else {
        return Err(bad());
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Json::String(s) => Ok((k, s)),
            _ => Err(bad()),
        })
        .collect()
}

fn parse_entry(name: &str, value: &Json) -> Result<SafeTensorInfo, LoadError> {
    let bad = |msg: &str| LoadError::new(ErrorKind::BadEntry(msg.into()));
    let obj = value.as_object().ok_or_else(|| bad("not an object"))?;
    if let Some(key) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        return Err(bad(&format!("unexpected field '{key}'")));
    }
    let dtype_name = obj
        .get("dtype")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("'dtype' missing or not a string"))?;
    let dtype = SafeDtype::from_name(dtype_name)
        .ok_or_else(|| LoadError::new(ErrorKind::UnknownDtype(dtype_name.into())))?;
    let dims = obj
        .get("shape")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("'shape' missing or not an array"))?;
    let dims: Vec<u64> = dims
        .iter()
        .map(|d| {
            d.as_u64()
                .ok_or_else(|| bad("'shape' holds a value that is not a non-negative integer"))
        })
        .collect::<Result<_, _>>()?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("'data_offsets' missing or not an array"))?;
    let (begin, end) = match offsets.as_slice() {
        [b, e] => match (b.as_u64(), e.as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad("'data_offsets' must be two non-negative integers")),
        },
        _ => return Err(bad("'data_offsets' must be two non-negative integers")),
    };

    let overflow = || {
        LoadError::new(ErrorKind::ShapeOverflow {
            shape: dims.clone(),
        })
    };
    let shape: Vec<usize> = dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| overflow()))
        .collect::<Result<_, _>>()?;
    let bytes = shape
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    if end < begin {
        return Err(bad("'data_offsets' end is before begin"));
    }
    if end - begin != bytes as u64 {
        return Err(LoadError::new(ErrorKind::SizeMismatch {
            expected: bytes as u64,
            got: end - begin,
        }));
    }
    // Range against the buffer is checked in check_tiling; keep u64 → usize
    // honest on 32-bit targets meanwhile.
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Ok(SafeTensorInfo {
        name: name.into(),
        dtype,
        shape,
        data_offsets: (to_usize(begin), to_usize(end)),
    })
}

/// Sorts tensors by offset and checks they tile `[0, data_len)` exactly.
fn check_tiling(
    tensors: &mut [SafeTensorInfo],
    data_start: usize,
    data_len: usize,
) -> Result<(), LoadError> {
    let at = |off: usize| (data_start as u64).saturating_add(off as u64);
    for t in tensors.iter() {
        let (start, end) = t.data_offsets;
        if end > data_len {
            let kind = ErrorKind::OffsetsOutOfRange {
                start: start as u64,
                end: end as u64,
                len: data_len as u64,
            };
            return Err(LoadError::new(kind).at(8).tensor(t.name.clone()));
        }
    }
    tensors.sort_by_key(|t| t.data_offsets);
    let mut pos = 0usize;
    let mut prev: Option<&str> = None;
    for t in tensors.iter() {
        let (start, end) = t.data_offsets;
        if start < pos {
            let other = prev.unwrap_or_default().to_string();
            return Err(LoadError::new(ErrorKind::TensorOverlap { other })
                .at(at(start))
                .tensor(t.name.clone()));
        }
        if start > pos {
            let kind = ErrorKind::DataHole {
                start: pos as u64,
                end: start as u64,
            };
            return Err(LoadError::new(kind).at(at(pos)));
        }
        pos = end;
        prev = Some(&t.name);
    }
    if pos != data_len {
        return Err(LoadError::new(ErrorKind::DataHole {
            start: pos as u64,
            end: data_len as u64,
        })
        .at(at(pos)));
    }
    Ok(())
}

/// A whole checkpoint: one file, or the shards an index names.
pub struct SafetensorsModel {
    files: Vec<SafetensorsFile>,
    dir: PathBuf,
}

impl SafetensorsModel {
    /// Opens a `.safetensors` file, an index `.json`, or a directory holding
    /// `model.safetensors.index.json`, else its `*.safetensors` files.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsModel, LoadError> {
        let path = path.as_ref();
        let dir = if path.is_dir() {
            path
        } else {
            path.parent().unwrap_or(Path::new("."))
        }
        .to_path_buf();
        let files = if path.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                open_index(&index)?
            } else {
                let mut shards = list_safetensors(path)?;
                shards.sort();
                shards
                    .iter()
                    .map(SafetensorsFile::open)
                    .collect::<Result<_, _>>()?
            }
        } else if path.extension().is_some_and(|e| e == "json") {
            open_index(path)?
        } else {
            vec![SafetensorsFile::open(path)?]
        };
        Ok(SafetensorsModel { files, dir })
    }

    /// The directory the checkpoint lives in (where `config.json` is).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// Every shard's tensors in one map; a name in two shards is an error.
    pub fn weights(&self) -> Result<WeightMap, LoadError> {
        let mut map = WeightMap::new();
        for f in &self.files {
            f.add_weights(&mut map)?;
        }
        Ok(map)
    }

    /// Total bytes over all shards.
    pub fn file_size(&self) -> u64 {
        self.files.iter().map(|f| f.file_size() as u64).sum()
    }
}

fn list_safetensors(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| LoadError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            out.push(path);
        }
    }
    if out.is_empty() {
        let err = std::io::Error::new(std::io::ErrorKind::NotFound, "no .safetensors files here");
        return Err(LoadError::io(dir, err));
    }
    Ok(out)
}

/// Opens the shards `index` names and checks each listed tensor is in the
/// shard the index says.
fn open_index(index: &Path) -> Result<Vec<SafetensorsFile>, LoadError> {
    let name = index.display().to_string();
    let bad = |msg: String| LoadError::new(ErrorKind::BadIndex(msg)).in_file(&name);
    let text = std::fs::read(index).map_err(|e| LoadError::io(index, e))?;
    let json: Json = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(Json::as_object)
        .ok_or_else(|| bad("'weight_map' missing or not an object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("shard of '{tensor}' is not a string")))?;
        // A shard is a sibling file: never let an index reach elsewhere.
        let plain = Path::new(shard).file_name().is_some_and(|f| f == shard)
            && shard != ".."
            && shard != ".";
        if !plain {
            return Err(bad(format!(
                "shard name '{shard}' is not a plain file name"
            )));
        }
        by_shard.entry(shard).or_default().push(tensor);
    }
    let mut files = Vec::with_capacity(by_shard.len());
    for (shard, tensors) in by_shard {
        let file = SafetensorsFile::open(dir.join(shard))?;
        if let Some(missing) = tensors.iter().find(|t| file.tensor(t).is_none()) {
            return Err(
                LoadError::new(ErrorKind::TensorNotFound(missing.to_string())).in_file(file.name()),
            );
        }
        files.push(file);
    }
    Ok(files)
}
