//! `WeightMap`: tensor name → dtype, shape and a zero-copy view of its bytes.
//!
//! GGUF and safetensors both end here, so models are built from one map
//! whatever the file format. A [`Weight`] holds an `Arc` of the file's
//! storage (usually an mmap), so the map stays valid after the file object
//! that produced it is dropped, and cloning it copies no tensor data.

use std::collections::HashMap;
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use kiln_kernels::{CpuTensor, DType, TensorDesc, TensorError};

use crate::error::{ErrorKind, LoadError};

/// The bytes of a whole model file: memory-mapped, or owned (tests, fuzzing).
pub(crate) enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Arc<[u8]>),
}

impl Storage {
    /// Maps `path` read-only.
    pub(crate) fn map(path: &Path) -> Result<Storage, LoadError> {
        let file = File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: the map is read-only and private to this process. Another
        // process truncating or rewriting the file while it is mapped could
        // change or fault the bytes under us; every mmap-based loader
        // (llama.cpp, safetensors) accepts that, and copying multi-GB weights
        // to avoid it would defeat the purpose of mapping.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        Ok(Storage::Mmap(map))
    }
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(b) => b,
        }
    }
}

/// One tensor: dtype, shape (kiln order: row-major, last dimension
/// contiguous) and a view of its bytes in the file.
#[derive(Clone)]
pub struct Weight {
    dtype: DType,
    shape: Vec<usize>,
    storage: Arc<Storage>,
    range: Range<usize>,
}

impl Weight {
    /// `range` must lie inside `storage` and match dtype × shape; the
    /// readers check both before building one.
    pub(crate) fn new(
        dtype: DType,
        shape: Vec<usize>,
        storage: Arc<Storage>,
        range: Range<usize>,
    ) -> Weight {
        Weight {
            dtype,
            shape,
            storage,
            range,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn desc(&self) -> TensorDesc {
        TensorDesc::new(self.dtype, self.shape.clone())
    }

    /// Element count (the readers checked it does not overflow).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor's raw little-endian bytes, straight from the file.
    pub fn bytes(&self) -> &[u8] {
        // The readers validated the range against this very storage.
        self.storage.get(self.range.clone()).unwrap_or(&[])
    }

    /// A host copy, e.g. to upload or to run a CPU reference on.
    pub fn to_cpu(&self) -> Result<CpuTensor, TensorError> {
        CpuTensor::from_bytes(self.desc(), self.bytes().to_vec())
    }
}

impl std::fmt::Debug for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{:?} ({} bytes)",
            self.dtype,
            self.shape,
            self.range.len()
        )
    }
}

/// Tensors by name, iterated in file order.
#[derive(Clone, Debug, Default)]
pub struct WeightMap {
    entries: Vec<(String, Weight)>,
    index: HashMap<String, usize>,
}

impl WeightMap {
    pub fn new() -> WeightMap {
        WeightMap::default()
    }

    /// Adds a tensor; a name already present is an error (two shards must
    /// not both define a tensor).
    pub fn insert(&mut self, name: impl Into<String>, weight: Weight) -> Result<(), LoadError> {
        let name = name.into();
        if self.index.contains_key(&name) {
            return Err(LoadError::new(ErrorKind::DuplicateTensor).tensor(name));
        }
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, weight));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Weight> {
        let &i = self.index.get(name)?;
        self.entries.get(i).map(|(_, w)| w)
    }

    /// Like `get`, but a missing tensor is a typed error naming it.
    pub fn require(&self, name: &str) -> Result<&Weight, LoadError> {
        self.get(name)
            .ok_or_else(|| LoadError::new(ErrorKind::TensorNotFound(name.to_string())))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Weight)> {
        self.entries.iter().map(|(n, w)| (n.as_str(), w))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Total elements over all tensors (saturating: a display figure).
    pub fn parameter_count(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |a, (_, w)| a.saturating_add(w.numel() as u64))
    }
}
