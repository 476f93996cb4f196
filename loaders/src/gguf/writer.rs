//! The GGUF writer: builds a v3 (or v2) file in memory or on disk.
//!
//! It follows what llama.cpp's `gguf.cpp` reads back: little-endian, u64
//! counts and lengths, tensor infos in insertion order with data offsets
//! relative to the data section, each tensor's data padded with zeros to
//! the alignment (the last one too: llama.cpp sizes the data section as the
//! sum of padded sizes), and names shorter than `GGML_MAX_NAME`.
//!
//! Tensors either carry their bytes ([`GgufWriter::add_tensor`]) or are only
//! declared ([`GgufWriter::declare_tensor`]) and streamed later through
//! [`GgufWriter::stream`]: the header needs every tensor's dtype and shape
//! up front, not its data, so a tool rewriting a model (`kiln lora merge`)
//! holds one tensor in memory at a time, not the model.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use kiln_kernels::{DType, TensorDesc};

use crate::error::{ErrorKind, LoadError};
use crate::gguf::values::{write_string, write_value};
use crate::gguf::{DEFAULT_ALIGNMENT, MAGIC, MAX_ALIGNMENT, MAX_DIMS, MAX_NAME_BYTES};
use crate::metadata::{Metadata, Value};

const ALIGNMENT_KEY: &str = "general.alignment";

struct PendingTensor {
    name: String,
    desc: TensorDesc,
    /// `desc.byte_size()`, checked when the tensor was added.
    size: usize,
    /// `None` for a tensor declared now and streamed later.
    data: Option<Vec<u8>>,
}

/// Collects metadata and tensors, then writes them as one GGUF file.
///
/// ```
/// # use kiln_loaders::{gguf::GgufWriter, GgufFile, Value};
/// # use kiln_kernels::DType;
/// let mut w = GgufWriter::new();
/// w.add("general.architecture", Value::String("llama".into()))?;
/// w.add_tensor("norm.weight", DType::F32, &[4], vec![0u8; 16])?;
/// let file = GgufFile::from_bytes(w.to_bytes()?, "model.gguf")?;
/// assert_eq!(file.tensors()[0].shape, vec![4]);
/// # Ok::<(), kiln_loaders::LoadError>(())
/// ```
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> GgufWriter {
        GgufWriter::new()
    }
}

impl GgufWriter {
    /// An empty v3 file with the default alignment (32).
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Writes a v2 header instead (v2 and v3 differ only in the number: v3
    /// allowed big-endian files, which kiln never writes).
    pub fn version(&mut self, version: u32) -> Result<&mut Self, LoadError> {
        if version != 2 && version != 3 {
            return Err(LoadError::new(ErrorKind::UnsupportedVersion(version)));
        }
        self.version = version;
        Ok(self)
    }

    /// Adds a key; adding `general.alignment` (a u32 power of two, at most
    /// [`MAX_ALIGNMENT`]) also sets
    /// the alignment tensors are padded to.
    pub fn add(&mut self, key: impl Into<String>, value: Value) -> Result<&mut Self, LoadError> {
        let key = key.into();
        if key == ALIGNMENT_KEY {
            match value {
                Value::U32(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => {
                    self.alignment = u64::from(a)
                }
                Value::U32(a) => return Err(LoadError::new(ErrorKind::BadAlignment(a.into()))),
                _ => {
                    return Err(LoadError::new(ErrorKind::BadMetadata {
                        key,
                        expected: "a u32",
                    }))
                }
            }
        }
        // Fail now rather than at write time on a malformed array.
        write_value(&mut Vec::new(), &value, 0)?;
        if !self.keys.insert(key.clone()) {
            return Err(LoadError::new(ErrorKind::DuplicateKey(key)));
        }
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Adds every key of `metadata` (sorted by key).
    pub fn add_metadata(&mut self, metadata: &Metadata) -> Result<&mut Self, LoadError> {
        for (k, v) in metadata.iter() {
            self.add(k, v.clone())?;
        }
        Ok(self)
    }

    /// Shorthand for `add("general.alignment", Value::U32(alignment))`.
    pub fn alignment(&mut self, alignment: u32) -> Result<&mut Self, LoadError> {
        self.add(ALIGNMENT_KEY, Value::U32(alignment))
    }

    /// Adds a tensor. `shape` is in kiln order (last dimension contiguous),
    /// `data` its bytes in `dtype`'s layout.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[usize],
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, LoadError> {
        let data = data.into();
        let t = self.check_tensor(name.into(), dtype, shape)?;
        if t.size != data.len() {
            return Err(LoadError::new(ErrorKind::SizeMismatch {
                expected: t.size as u64,
                got: data.len() as u64,
            })
            .tensor(t.name));
        }
        self.push(PendingTensor {
            data: Some(data),
            ..t
        })
    }

    /// Declares a tensor whose bytes are written later, in declaration
    /// order, through [`stream`](Self::stream). The checks are
    /// [`add_tensor`](Self::add_tensor)'s.
    pub fn declare_tensor(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[usize],
    ) -> Result<&mut Self, LoadError> {
        let t = self.check_tensor(name.into(), dtype, shape)?;
        self.push(t)
    }

    /// A tensor entry without data, after checking name, shape and dtype.
    fn check_tensor(
        &self,
        name: String,
        dtype: DType,
        shape: &[usize],
    ) -> Result<PendingTensor, LoadError> {
        let fail = |kind| LoadError::new(kind).tensor(name.clone());
        if name.len() > MAX_NAME_BYTES {
            return Err(fail(ErrorKind::NameTooLong {
                len: name.len(),
                max: MAX_NAME_BYTES,
            }));
        }
        if shape.len() > MAX_DIMS {
            return Err(fail(ErrorKind::TooManyDims {
                n_dims: shape.len() as u64,
                max: MAX_DIMS,
            }));
        }
        let desc = TensorDesc::new(dtype, shape);
        let row = shape.last().copied().unwrap_or(1);
        if row % dtype.block_size() != 0 {
            return Err(fail(ErrorKind::RowNotBlockMultiple {
                row: row as u64,
                dtype,
                block: dtype.block_size(),
            }));
        }
        let shape_u64 = || shape.iter().map(|&d| d as u64).collect();
        let size = desc
            .byte_size()
            .ok_or_else(|| fail(ErrorKind::ShapeOverflow { shape: shape_u64() }))?;
        Ok(PendingTensor {
            name,
            desc,
            size,
            data: None,
        })
    }

    fn push(&mut self, t: PendingTensor) -> Result<&mut Self, LoadError> {
        if !self.names.insert(t.name.clone()) {
            return Err(LoadError::new(ErrorKind::DuplicateTensor).tensor(t.name));
        }
        self.tensors.push(t);
        Ok(self)
    }

    /// The data of a tensor added with its bytes; an error for one only
    /// declared (its bytes must come through [`stream`](Self::stream)).
    fn data_of(t: &PendingTensor) -> Result<&[u8], LoadError> {
        t.data
            .as_deref()
            .ok_or_else(|| LoadError::new(ErrorKind::MissingTensorData).tensor(t.name.clone()))
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, LoadError> {
        let mut out = self.header()?;
        for t in &self.tensors {
            out.extend_from_slice(GgufWriter::data_of(t)?);
            pad(&mut out, self.align());
        }
        Ok(out)
    }

    /// Everything before the first tensor's data: magic, counts, metadata,
    /// tensor infos, padding.
    fn header(&self) -> Result<Vec<u8>, LoadError> {
        let align = self.align();
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            write_value(&mut out, value, 0)?;
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            write_string(&mut out, &t.name);
            out.extend_from_slice(&(t.desc.shape.len() as u32).to_le_bytes());
            // GGUF's ne[] runs from the contiguous dimension outwards.
            for &d in t.desc.shape.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&t.desc.dtype.info().ggml_id.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += t.size.next_multiple_of(align);
        }
        pad(&mut out, align);
        Ok(out)
    }

    fn align(&self) -> usize {
        usize::try_from(self.alignment).unwrap_or(usize::MAX)
    }

    /// Writes the file to `w`, tensor by tensor: no second copy of the
    /// data is made (multi-GiB models). Every tensor must carry its data.
    pub fn write_to(&self, w: impl Write) -> Result<(), LoadError> {
        // Refuse before writing anything, rather than leave a header behind.
        for t in &self.tensors {
            GgufWriter::data_of(t)?;
        }
        self.stream(w)?.finish().map(drop)
    }

    /// Writes the header to `w` and returns a [`TensorStream`] that takes
    /// the declared tensors' bytes in declaration order. Tensors added with
    /// their data are written as the stream reaches them.
    pub fn stream<W: Write>(&self, mut w: W) -> Result<TensorStream<'_, W>, LoadError> {
        w.write_all(&self.header()?).map_err(io)?;
        Ok(TensorStream {
            writer: self,
            w,
            next: 0,
            zeros: vec![0u8; self.align().min(1 << 16)],
        })
    }

    /// Writes the file at `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), LoadError> {
        let path = path.as_ref();
        let file = std::fs::File::create(path).map_err(|e| LoadError::io(path, e))?;
        self.write_to(std::io::BufWriter::with_capacity(1 << 20, file))
            .map_err(|e| e.in_file(path.display().to_string()))
    }
}

fn io(e: std::io::Error) -> LoadError {
    LoadError::new(ErrorKind::Io(e))
}

/// A GGUF file being written tensor by tensor: the header is out, and each
/// declared tensor's bytes go in with [`write_tensor`](Self::write_tensor),
/// in the order the tensors were declared. [`finish`](Self::finish) checks
/// every tensor was written and flushes.
pub struct TensorStream<'a, W: Write> {
    writer: &'a GgufWriter,
    w: W,
    /// Index of the next tensor to write.
    next: usize,
    zeros: Vec<u8>,
}

impl<W: Write> TensorStream<'_, W> {
    /// Writes the next declared tensor, `name`, whose bytes must be its
    /// dtype and shape's size; tensors added with data before it are written
    /// first.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), LoadError> {
        self.write_ready()?;
        let Some(t) = self.writer.tensors.get(self.next) else {
            return Err(LoadError::new(ErrorKind::StreamOrder { expected: None }).tensor(name));
        };
        if t.name != name {
            return Err(LoadError::new(ErrorKind::StreamOrder {
                expected: Some(t.name.clone()),
            })
            .tensor(name));
        }
        if data.len() != t.size {
            return Err(LoadError::new(ErrorKind::SizeMismatch {
                expected: t.size as u64,
                got: data.len() as u64,
            })
            .tensor(name));
        }
        self.put(data, t.size)?;
        self.next += 1;
        Ok(())
    }

    /// Writes the tensors that carry their data, up to the next declared one.
    fn write_ready(&mut self) -> Result<(), LoadError> {
        while let Some(t) = self.writer.tensors.get(self.next) {
            let Some(data) = &t.data else { break };
            self.put(data, t.size)?;
            self.next += 1;
        }
        Ok(())
    }

    /// One tensor's bytes and the zeros that pad them to the alignment.
    fn put(&mut self, data: &[u8], size: usize) -> Result<(), LoadError> {
        self.w.write_all(data).map_err(io)?;
        let mut padding = size.next_multiple_of(self.writer.align()) - size;
        while padding > 0 {
            let n = padding.min(self.zeros.len());
            self.w.write_all(&self.zeros[..n]).map_err(io)?;
            padding -= n;
        }
        Ok(())
    }

    /// Checks every tensor was written, flushes, and hands back the sink.
    pub fn finish(mut self) -> Result<W, LoadError> {
        self.write_ready()?;
        if let Some(t) = self.writer.tensors.get(self.next) {
            return Err(LoadError::new(ErrorKind::MissingTensorData).tensor(t.name.clone()));
        }
        self.w.flush().map_err(io)?;
        Ok(self.w)
    }
}

fn pad(out: &mut Vec<u8>, align: usize) {
    out.resize(out.len().next_multiple_of(align), 0);
}
