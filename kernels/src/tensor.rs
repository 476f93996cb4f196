//! Tensor descriptions and host-side tensors.

use std::borrow::Cow;
use std::fmt;

use half::{bf16, f16};

use crate::dtype::DType;

/// A tensor's dtype and shape (row-major, last dimension contiguous).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TensorDesc {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorDesc {
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> TensorDesc {
        TensorDesc {
            dtype,
            shape: shape.into(),
        }
    }

    pub fn f32(shape: impl Into<Vec<usize>>) -> TensorDesc {
        TensorDesc::new(DType::F32, shape)
    }

    /// Number of elements, or `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    /// Bytes of storage, or `None` on overflow or a row that is not a whole
    /// number of blocks.
    pub fn byte_size(&self) -> Option<usize> {
        let n = self.numel()?;
        if let Some(&last) = self.shape.last() {
            if !last.is_multiple_of(self.dtype.block_size()) {
                return None;
            }
        }
        self.dtype.bytes_for(n)
    }

    /// Size of the last dimension (1 for a scalar).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Product of all dimensions but the last (1 for a vector).
    pub fn rows(&self) -> usize {
        let n = self.shape.len().saturating_sub(1);
        self.shape[..n].iter().product()
    }
}

impl fmt::Debug for TensorDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)
    }
}

/// Errors building a host tensor.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TensorError {
    #[error("tensor {desc:?} needs {expected:?} bytes, got {got}")]
    Size {
        desc: TensorDesc,
        expected: Option<usize>,
        got: usize,
    },
    #[error("dtype {0} cannot be read as f32 here")]
    NotConvertible(DType),
}

/// A tensor in host memory. F32 data is kept as `f32`s so the CPU
/// references can read and write it directly; other dtypes keep their bytes.
#[derive(Clone, PartialEq)]
pub struct CpuTensor {
    desc: TensorDesc,
    data: CpuData,
}

#[derive(Clone, PartialEq)]
enum CpuData {
    F32(Vec<f32>),
    Bytes(Vec<u8>),
}

impl CpuTensor {
    /// Zero-filled storage for `desc`.
    pub fn zeros(desc: &TensorDesc) -> Result<CpuTensor, TensorError> {
        let size = desc.byte_size().ok_or_else(|| TensorError::Size {
            desc: desc.clone(),
            expected: None,
            got: 0,
        })?;
        let data = if desc.dtype == DType::F32 {
            CpuData::F32(vec![0.0; size / 4])
        } else {
            CpuData::Bytes(vec![0; size])
        };
        Ok(CpuTensor {
            desc: desc.clone(),
            data,
        })
    }

    pub fn from_f32(
        shape: impl Into<Vec<usize>>,
        values: Vec<f32>,
    ) -> Result<CpuTensor, TensorError> {
        let desc = TensorDesc::f32(shape);
        if desc.numel() != Some(values.len()) {
            return Err(TensorError::Size {
                expected: desc.byte_size(),
                desc,
                got: values.len() * 4,
            });
        }
        Ok(CpuTensor {
            desc,
            data: CpuData::F32(values),
        })
    }

    /// An I32 tensor (token ids, positions) from its values.
    pub fn from_i32(
        shape: impl Into<Vec<usize>>,
        values: &[i32],
    ) -> Result<CpuTensor, TensorError> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        CpuTensor::from_bytes(TensorDesc::new(DType::I32, shape), bytes)
    }

    /// The values, when the dtype is I32.
    pub fn to_i32(&self) -> Option<Vec<i32>> {
        match (&self.data, self.desc.dtype) {
            (CpuData::Bytes(b), DType::I32) => Some(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// f32 values stored as f16 (rounded to nearest).
    pub fn from_f32_as_f16(
        shape: impl Into<Vec<usize>>,
        values: &[f32],
    ) -> Result<CpuTensor, TensorError> {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        CpuTensor::from_bytes(TensorDesc::new(DType::F16, shape), bytes)
    }

    /// Raw little-endian bytes in `desc.dtype`'s layout.
    pub fn from_bytes(desc: TensorDesc, bytes: Vec<u8>) -> Result<CpuTensor, TensorError> {
        let expected = desc.byte_size();
        if expected != Some(bytes.len()) {
            return Err(TensorError::Size {
                desc,
                expected,
                got: bytes.len(),
            });
        }
        let data = if desc.dtype == DType::F32 {
            CpuData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        } else {
            CpuData::Bytes(bytes)
        };
        Ok(CpuTensor { desc, data })
    }

    pub fn desc(&self) -> &TensorDesc {
        &self.desc
    }

    /// The same data under another shape with the same byte size.
    pub fn reshape(mut self, shape: impl Into<Vec<usize>>) -> Result<CpuTensor, TensorError> {
        let desc = TensorDesc::new(self.desc.dtype, shape);
        let have = self.desc.byte_size().unwrap_or(0);
        if desc.byte_size() != Some(have) {
            return Err(TensorError::Size {
                expected: desc.byte_size(),
                desc,
                got: have,
            });
        }
        self.desc = desc;
        Ok(self)
    }

    pub fn dtype(&self) -> DType {
        self.desc.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.desc.shape
    }

    /// The values, when the dtype is F32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            CpuData::F32(v) => Some(v),
            CpuData::Bytes(_) => None,
        }
    }

    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            CpuData::F32(v) => Some(v),
            CpuData::Bytes(_) => None,
        }
    }

    /// The values as f32: borrowed for F32, converted for F16 and BF16.
    pub fn to_f32(&self) -> Result<Cow<'_, [f32]>, TensorError> {
        match (&self.data, self.desc.dtype) {
            (CpuData::F32(v), _) => Ok(Cow::Borrowed(v)),
            (CpuData::Bytes(b), DType::F16) => Ok(Cow::Owned(
                b.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )),
            (CpuData::Bytes(b), DType::BF16) => Ok(Cow::Owned(
                b.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )),
            (_, d) => Err(TensorError::NotConvertible(d)),
        }
    }

    /// The storage as little-endian bytes (what the GPU receives).
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match &self.data {
            CpuData::F32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            CpuData::Bytes(b) => Cow::Borrowed(b),
        }
    }
}

impl fmt::Debug for CpuTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuTensor({:?})", self.desc)
    }
}
