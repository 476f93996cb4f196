//! The GGUF reader: parses header, metadata and tensor infos, checks every
//! tensor's bytes lie inside the file, and hands out zero-copy views.
//!
//! File layout (GGUF spec, v2 and v3 are identical on little-endian
//! machines; v1 used u32 counts and is refused):
//!
//! ```text
//! "GGUF" u32 version  u64 n_tensors  u64 n_kv
//! n_kv × (string key, u32 type, value)
//! n_tensors × (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
//! zero padding up to `general.alignment` (default 32)
//! data section: each tensor at `offset` from its start, offsets aligned
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use kiln_kernels::{DType, TensorDesc};

use crate::error::{ErrorKind, LoadError};
use crate::gguf::cursor::Cursor;
use crate::gguf::values::{read_type, read_value};
use crate::gguf::{DEFAULT_ALIGNMENT, MAGIC, MAX_ALIGNMENT, MAX_DIMS};
use crate::metadata::{Metadata, Value};
use crate::weights::{Storage, Weight, WeightMap};

/// One tensor's entry in the GGUF header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// kiln order: row-major with the last dimension contiguous, i.e. GGUF's
    /// `ne` reversed (`ne[0]`, the contiguous row length, is `shape.last()`).
    /// A GGUF `token_embd.weight` with `ne = [576, 49152]` is `[49152, 576]`.
    pub shape: Vec<usize>,
    /// Offset of the tensor's bytes from the start of the data section, as
    /// stored in the file (see [`GgufFile::data_offset`]).
    pub offset: u64,
    /// Bytes of storage: `dtype.bytes_for(numel)`.
    pub byte_size: usize,
}

impl TensorInfo {
    pub fn desc(&self) -> TensorDesc {
        TensorDesc::new(self.dtype, self.shape.clone())
    }

    /// Element count (checked for overflow when the file was read).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open GGUF file: parsed header plus the mapped bytes.
pub struct GgufFile {
    name: String,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_offset: usize,
    storage: Arc<Storage>,
}

impl GgufFile {
    /// Memory-maps and parses `path`. Tensor data is not read until used.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, LoadError> {
        let path = path.as_ref();
        let storage = Storage::map(path)?;
        GgufFile::parse(Arc::new(storage), path.display().to_string())
    }

    /// Parses bytes already in memory; `name` stands for the file in errors.
    pub fn from_bytes(
        bytes: impl Into<Arc<[u8]>>,
        name: impl Into<String>,
    ) -> Result<GgufFile, LoadError> {
        GgufFile::parse(Arc::new(Storage::Owned(bytes.into())), name.into())
    }

    fn parse(storage: Arc<Storage>, name: String) -> Result<GgufFile, LoadError> {
        let header = match parse_header(&storage) {
            Ok(h) => h,
            Err(e) => return Err(e.in_file(name)),
        };
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            name,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            index,
            alignment: header.alignment,
            data_offset: header.data_offset,
            storage,
        })
    }

    /// The path (or name) this file was opened under.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(*self.index.get(name)?)
    }

    /// `general.alignment`, or 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset where the data section starts.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_size(&self) -> usize {
        self.storage.len()
    }

    /// The tensor's bytes, straight from the mapped file.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], LoadError> {
        let not_found =
            || LoadError::new(ErrorKind::TensorNotFound(name.to_string())).in_file(&self.name);
        let info = self.tensor(name).ok_or_else(not_found)?;
        self.storage.get(self.range(info)).ok_or_else(not_found)
    }

    /// Every tensor as a name → (dtype, shape, bytes) map sharing this
    /// file's mapping.
    pub fn weights(&self) -> WeightMap {
        let mut map = WeightMap::new();
        for t in &self.tensors {
            let w = Weight::new(
                t.dtype,
                t.shape.clone(),
                self.storage.clone(),
                self.range(t),
            );
            // Names were checked unique while parsing, so this cannot fail.
            let inserted = map.insert(t.name.clone(), w);
            debug_assert!(inserted.is_ok());
        }
        map
    }

    /// The checked byte range: parsing proved it fits in the file.
    fn range(&self, t: &TensorInfo) -> std::ops::Range<usize> {
        let start = self.data_offset + t.offset as usize;
        start..start + t.byte_size
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Header {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: usize,
}

/// The smallest possible key/value pair: u64 key length, u32 type, 1 byte.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// The smallest possible tensor info: u64 name length, u32 n_dims, u32 type,
/// u64 offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

fn parse_header(buf: &[u8]) -> Result<Header, LoadError> {
    let mut c = Cursor::new(buf);
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err(LoadError::new(ErrorKind::BadMagic {
            found: magic.to_vec(),
        })
        .at(0));
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        // v3 allowed big-endian files; their version reads byte-swapped.
        let kind = match version.swap_bytes() {
            v @ (2 | 3) => ErrorKind::BigEndian(v),
            _ => ErrorKind::UnsupportedVersion(version),
        };
        return Err(LoadError::new(kind).at(4));
    }
    let n_tensors = c.count("tensor", MIN_TENSOR_INFO_BYTES)?;
    let n_kv = c.count("metadata key/value", MIN_KV_BYTES)?;

    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = alignment(&metadata)?;

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut info_offsets = Vec::with_capacity(n_tensors);
    let mut seen = HashSet::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let at = c.pos() as u64;
        let info = read_tensor_info(&mut c).map_err(|e| e.at(at))?;
        if !seen.insert(info.name.clone()) {
            return Err(LoadError::new(ErrorKind::DuplicateTensor)
                .at(at)
                .tensor(info.name));
        }
        tensors.push(info);
        info_offsets.push(at);
    }

    // alignment is a power of two <= u32::MAX, so this cannot overflow a u64;
    // a data section starting past the end is only an error if a tensor needs
    // bytes from it, which check_ranges catches.
    let data_offset = (c.pos() as u64).next_multiple_of(alignment);
    let data_len = (buf.len() as u64).saturating_sub(data_offset);
    check_ranges(&tensors, &info_offsets, alignment, data_len)?;
    // Every tensor (if any) ends inside buf, so data_offset fits in usize
    // whenever it is used; clamp it for the tensorless case.
    let data_offset = usize::try_from(data_offset)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn read_metadata(c: &mut Cursor<'_>, n_kv: usize) -> Result<Metadata, LoadError> {
    let mut metadata = Metadata::new();
    for _ in 0..n_kv {
        let at = c.pos() as u64;
        let key = c.string("metadata key")?;
        let ty = read_type(c)?;
        let value = read_value(c, ty, 0)?;
        // llama.cpp refuses duplicate keys too: which one wins is undefined.
        if metadata.contains(&key) {
            return Err(LoadError::new(ErrorKind::DuplicateKey(key)).at(at));
        }
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// `general.alignment`: a u32 (as llama.cpp requires) power of two, at most
/// [`MAX_ALIGNMENT`].
fn alignment(metadata: &Metadata) -> Result<u64, LoadError> {
    const KEY: &str = "general.alignment";
    match metadata.get(KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() && *a <= MAX_ALIGNMENT => Ok(u64::from(*a)),
        Some(Value::U32(a)) => Err(LoadError::new(ErrorKind::BadAlignment(u64::from(*a)))),
        Some(_) => Err(LoadError::new(ErrorKind::BadMetadata {
            key: KEY.into(),
            expected: "a u32",
        })),
    }
}

fn read_tensor_info(c: &mut Cursor<'_>) -> Result<TensorInfo, LoadError> {
    let name = c.string("tensor name")?;
    let fail = |kind| LoadError::new(kind).tensor(name.clone());
    let n_dims = c.u32("tensor n_dims").map_err(|e| e.tensor(name.clone()))?;
    if n_dims as usize > MAX_DIMS {
        return Err(fail(ErrorKind::TooManyDims {
            n_dims: n_dims.into(),
            max: MAX_DIMS,
        }));
    }
    let mut ne = [1u64; MAX_DIMS];
    for d in ne.iter_mut().take(n_dims as usize) {
        *d = c
            .u64("tensor dimension")
            .map_err(|e| e.tensor(name.clone()))?;
    }
    let ne = &ne[..n_dims as usize];
    let type_id = c.u32("tensor type").map_err(|e| e.tensor(name.clone()))?;
    let dtype =
        DType::from_ggml_id(type_id).ok_or_else(|| fail(ErrorKind::UnknownGgmlType(type_id)))?;
    let offset = c.u64("tensor offset").map_err(|e| e.tensor(name.clone()))?;

    let overflow = || fail(ErrorKind::ShapeOverflow { shape: ne.to_vec() });
    let shape: Vec<usize> = ne
        .iter()
        .rev()
        .map(|&d| usize::try_from(d).map_err(|_| overflow()))
        .collect::<Result<_, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    // ggml quantizes along rows (ne[0]); a row must be whole blocks.
    let row = ne.first().copied().unwrap_or(1);
    if row % dtype.block_size() as u64 != 0 {
        return Err(fail(ErrorKind::RowNotBlockMultiple {
            row,
            dtype,
            block: dtype.block_size(),
        }));
    }
    let byte_size = dtype.bytes_for(numel).ok_or_else(overflow)?;
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        offset,
        byte_size,
    })
}

/// Each tensor's data must be aligned, inside the data section, and not
/// overlap another's.
fn check_ranges(
    tensors: &[TensorInfo],
    info_offsets: &[u64],
    alignment: u64,
    data_len: u64,
) -> Result<(), LoadError> {
    let mut ranges = Vec::with_capacity(tensors.len());
    for (i, (t, &at)) in tensors.iter().zip(info_offsets).enumerate() {
        let fail = |kind| LoadError::new(kind).at(at).tensor(t.name.clone());
        if t.offset % alignment != 0 {
            return Err(fail(ErrorKind::MisalignedTensor {
                offset: t.offset,
                alignment,
            }));
        }
        let end = t.offset.checked_add(t.byte_size as u64);
        match end {
            Some(end) if end <= data_len => ranges.push((t.offset, end, i)),
            _ => {
                let end = end.unwrap_or(u64::MAX);
                return Err(fail(ErrorKind::TensorPastEnd {
                    start: t.offset,
                    end,
                    len: data_len,
                }));
            }
        }
    }
    // Sorted by start, two non-empty neighbours overlap when the later one
    // starts before the earlier one ends.
    ranges.retain(|&(start, end, _)| end > start);
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        if let [(_, prev_end, prev), (start, _, cur)] = *pair {
            if start < prev_end {
                let (Some(t), Some(other)) = (tensors.get(cur), tensors.get(prev)) else {
                    continue;
                };
                let at = info_offsets.get(cur).copied().unwrap_or(0);
                return Err(LoadError::new(ErrorKind::TensorOverlap {
                    other: other.name.clone(),
                })
                .at(at)
                .tensor(t.name.clone()));
            }
        }
    }
    Ok(())
}
