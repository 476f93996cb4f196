//! CPU (de)quantization of the GGML storage types.
//!
//! This is the spec every GPU dequant kernel and quantized matmul is checked
//! against, and the way to build quantized test data. Block layouts follow
//! ggml's `ggml-common.h`; the arithmetic follows ggml's `dequantize_row_*`
//! and `quantize_row_*_ref` in `ggml-quants.c`, operation for operation, so
//! results are bit-identical to ggml and to the `gguf` Python package
//! (checked against fixtures made by `scripts/gen_quant_fixtures.py`).
//!
//! Why decoding is robust to evaluation order (GPU kernels may rely on it):
//! every scale is an f16 (11 significant bits) or an f32 `d` times a small
//! integer, so in every type all products but the last are exact in f32;
//! `d * sc * q`, `d * (sc * q)` and `fma(d * sc, q, -m)` all round once, to
//! the same value.
//!
//! One file per family: `float` (F32, F16, BF16), `legacy` (Q4_0 … Q8_1),
//! `kquants` (Q2_K … Q8_K decoding), `kquantize` with its scale search
//! `kscale` (Q2_K … Q8_K encoding), `iq` (IQ4_NL, IQ4_XS).
//!
//! Every entry point checks lengths first and returns a [`QuantError`]; no
//! input makes it panic.

mod float;
mod iq;
mod kquantize;
mod kquants;
mod kscale;
mod legacy;

use half::f16;
use rayon::prelude::*;

use crate::dtype::DType;
use crate::tensor::{CpuTensor, TensorError};

/// Why a (de)quantization was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QuantError {
    #[error("{dtype}: {len} bytes is not a whole number of {block_bytes}-byte blocks")]
    RaggedBytes {
        dtype: DType,
        len: usize,
        block_bytes: usize,
    },
    #[error("{dtype}: {len} values is not a whole number of {block_size}-value blocks")]
    RaggedValues {
        dtype: DType,
        len: usize,
        block_size: usize,
    },
    #[error("{dtype}: {bytes} bytes hold {expected} values, but the f32 side has {got}")]
    ValueCount {
        dtype: DType,
        bytes: usize,
        expected: usize,
        got: usize,
    },
    #[error("{dtype}: {values} values take {expected} bytes, but the byte side has {got}")]
    ByteCount {
        dtype: DType,
        values: usize,
        expected: usize,
        got: usize,
    },
    #[error(
        "{dtype}: row length {row_len} is zero or not a multiple of the block size {block_size}"
    )]
    RowLen {
        dtype: DType,
        row_len: usize,
        block_size: usize,
    },
    #[error("{dtype}: {op} is not implemented")]
    Unsupported { dtype: DType, op: &'static str },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Decodes whole blocks: `bytes.len() / block_bytes` blocks into as many
/// `block_size` values. Callers check the lengths match first.
type DequantFn = fn(&[u8], &mut [f32]);
/// Encodes whole blocks, the inverse shape of [`DequantFn`].
type QuantFn = fn(&[f32], &mut [u8]);

fn dequant_fn(dtype: DType) -> Option<DequantFn> {
    Some(match dtype {
        DType::F32 => float::dequant_f32,
        DType::F16 => float::dequant_f16,
        DType::BF16 => float::dequant_bf16,
        DType::Q4_0 => legacy::dequant_q4_0,
        DType::Q4_1 => legacy::dequant_q4_1,
        DType::Q5_0 => legacy::dequant_q5_0,
        DType::Q5_1 => legacy::dequant_q5_1,
        DType::Q8_0 => legacy::dequant_q8_0,
        DType::Q8_1 => legacy::dequant_q8_1,
        DType::Q2K => kquants::dequant_q2_k,
        DType::Q3K => kquants::dequant_q3_k,
        DType::Q4K => kquants::dequant_q4_k,
        DType::Q5K => kquants::dequant_q5_k,
        DType::Q6K => kquants::dequant_q6_k,
        DType::Q8K => kquants::dequant_q8_k,
        DType::IQ4NL => iq::dequant_iq4_nl,
        DType::IQ4XS => iq::dequant_iq4_xs,
        _ => return None,
    })
}

fn quant_fn(dtype: DType) -> Option<QuantFn> {
    Some(match dtype {
        DType::F32 => float::quant_f32,
        DType::F16 => float::quant_f16,
        DType::BF16 => float::quant_bf16,
        DType::Q4_0 => legacy::quant_q4_0,
        DType::Q4_1 => legacy::quant_q4_1,
        DType::Q5_0 => legacy::quant_q5_0,
        DType::Q5_1 => legacy::quant_q5_1,
        DType::Q8_0 => legacy::quant_q8_0,
        DType::Q8_1 => legacy::quant_q8_1,
        DType::Q2K => kquantize::quant_q2_k,
        DType::Q3K => kquantize::quant_q3_k,
        DType::Q4K => kquantize::quant_q4_k,
        DType::Q5K => kquantize::quant_q5_k,
        DType::Q6K => kquantize::quant_q6_k,
        DType::Q8K => kquantize::quant_q8_k,
        _ => return None,
    })
}

/// True when [`dequantize`] handles `dtype`.
pub fn can_dequantize(dtype: DType) -> bool {
    dequant_fn(dtype).is_some()
}

/// True when [`quantize`] handles `dtype`.
pub fn can_quantize(dtype: DType) -> bool {
    quant_fn(dtype).is_some()
}

/// Number of values `bytes` of `dtype` decode to.
fn values_in(dtype: DType, bytes: usize) -> Result<usize, QuantError> {
    let info = dtype.info();
    if !bytes.is_multiple_of(info.block_bytes) {
        return Err(QuantError::RaggedBytes {
            dtype,
            len: bytes,
            block_bytes: info.block_bytes,
        });
    }
    // bytes / block_bytes blocks of block_size values each; block_size <=
    // block_bytes * 8 for every type, so this cannot overflow.
    Ok(bytes / info.block_bytes * info.block_size)
}

/// Bytes that `values` values of `dtype` encode to.
fn bytes_for(dtype: DType, values: usize) -> Result<usize, QuantError> {
    let block_size = dtype.block_size();
    let ragged = QuantError::RaggedValues {
        dtype,
        len: values,
        block_size,
    };
    if !values.is_multiple_of(block_size) {
        return Err(ragged);
    }
    dtype.bytes_for(values).ok_or(ragged)
}

/// Decodes `bytes` (whole blocks of `dtype`, ggml layout) into `out`, which
/// must hold exactly the values they encode.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let f = dequant_fn(dtype).ok_or(QuantError::Unsupported {
        dtype,
        op: "dequantize",
    })?;
    let expected = values_in(dtype, bytes.len())?;
    if out.len() != expected {
        return Err(QuantError::ValueCount {
            dtype,
            bytes: bytes.len(),
            expected,
            got: out.len(),
        });
    }
    f(bytes, out);
    Ok(())
}

/// [`dequantize`] into a new vector.
pub fn dequantize_to_vec(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    dequant_fn(dtype).ok_or(QuantError::Unsupported {
        dtype,
        op: "dequantize",
    })?;
    let mut out = vec![0.0; values_in(dtype, bytes.len())?];
    dequantize(dtype, bytes, &mut out)?;
    Ok(out)
}

/// [`dequantize`] in parallel over rows of `row_len` values (rayon), for big
/// tensors; `row_len` must be a multiple of the block size. Gives the same
/// bits as [`dequantize`]: every block decodes on its own.
pub fn dequantize_rows(
    dtype: DType,
    bytes: &[u8],
    out: &mut [f32],
    row_len: usize,
) -> Result<(), QuantError> {
    let f = dequant_fn(dtype).ok_or(QuantError::Unsupported {
        dtype,
        op: "dequantize",
    })?;
    let expected = values_in(dtype, bytes.len())?;
    if out.len() != expected {
        return Err(QuantError::ValueCount {
            dtype,
            bytes: bytes.len(),
            expected,
            got: out.len(),
        });
    }
    let row_bytes = row_bytes(dtype, row_len)?;
    // Rows are at least one block; batch small rows so a task decodes ~64 KiB.
    let min_rows = (64 * 1024 / row_bytes).max(1);
    out.par_chunks_mut(row_len)
        .zip(bytes.par_chunks(row_bytes))
        .with_min_len(min_rows)
        .for_each(|(o, b)| f(b, o));
    Ok(())
}

/// Encodes `values` (a whole number of blocks) into a new byte vector in
/// `dtype`'s ggml layout, with ggml's reference quantizer.
pub fn quantize(dtype: DType, values: &[f32]) -> Result<Vec<u8>, QuantError> {
    quant_fn(dtype).ok_or(QuantError::Unsupported {
        dtype,
        op: "quantize",
    })?;
    let mut out = vec![0; bytes_for(dtype, values.len())?];
    quantize_into(dtype, values, &mut out)?;
    Ok(out)
}

/// [`quantize`] into `out`, which must be exactly the encoded size.
pub fn quantize_into(dtype: DType, values: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    let f = quant_fn(dtype).ok_or(QuantError::Unsupported {
        dtype,
        op: "quantize",
    })?;
    let expected = bytes_for(dtype, values.len())?;
    if out.len() != expected {
        return Err(QuantError::ByteCount {
            dtype,
            values: values.len(),
            expected,
            got: out.len(),
        });
    }
    f(values, out);
    Ok(())
}

/// [`quantize`] in parallel over rows of `row_len` values (rayon). Same bits
/// as [`quantize`]: ggml's reference quantizers work block by block.
pub fn quantize_rows(dtype: DType, values: &[f32], row_len: usize) -> Result<Vec<u8>, QuantError> {
    let f = quant_fn(dtype).ok_or(QuantError::Unsupported {
        dtype,
        op: "quantize",
    })?;
    let row_bytes = row_bytes(dtype, row_len)?;
    let mut out = vec![0; bytes_for(dtype, values.len())?];
    out.par_chunks_mut(row_bytes)
        .zip(values.par_chunks(row_len))
        .for_each(|(o, v)| f(v, o));
    Ok(out)
}

fn row_bytes(dtype: DType, row_len: usize) -> Result<usize, QuantError> {
    let bad = QuantError::RowLen {
        dtype,
        row_len,
        block_size: dtype.block_size(),
    };
    if row_len == 0 {
        return Err(bad);
    }
    dtype.bytes_for(row_len).ok_or(bad)
}

/// Decodes a host tensor of any supported dtype into an F32 tensor of the
/// same shape, in parallel over its rows.
pub fn dequantize_tensor(t: &CpuTensor) -> Result<CpuTensor, QuantError> {
    let dtype = t.dtype();
    let bytes = t.bytes();
    if !can_dequantize(dtype) {
        return Err(QuantError::Unsupported {
            dtype,
            op: "dequantize",
        });
    }
    let mut out = vec![0.0; values_in(dtype, bytes.len())?];
    let row_len = t.desc().cols();
    if row_len > 0 && !out.is_empty() {
        dequantize_rows(dtype, &bytes, &mut out, row_len)?;
    }
    Ok(CpuTensor::from_f32(t.shape().to_vec(), out)?)
}

// ---- helpers shared by the families ----

/// ggml's `GGML_FP16_TO_FP32`: exact widening of a little-endian f16.
#[inline]
fn f16_le(lo: u8, hi: u8) -> f32 {
    f16::from_le_bytes([lo, hi]).to_f32()
}

/// ggml's `GGML_FP32_TO_FP16`: round to nearest even, as little-endian bytes.
#[inline]
fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// ggml's `nearest_int`: adding 1.5 * 2^23 leaves round-half-to-even of
/// `x` in the low mantissa bits. Valid for |x| <= 2^22 - 1 (ggml asserts
/// that in debug builds); beyond it the result is garbage, as in ggml, but
/// never a panic, and callers clamp it.
#[inline]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Runs `f` on each `B`-byte block and its `N` output values.
#[inline]
fn each_block_dequant<const B: usize, const N: usize>(
    bytes: &[u8],
    out: &mut [f32],
    mut f: impl FnMut(&[u8; B], &mut [f32; N]),
) {
    for (b, o) in bytes.chunks_exact(B).zip(out.chunks_exact_mut(N)) {
        // chunks_exact yields exactly B and N elements: these always convert.
        if let (Ok(b), Ok(o)) = (<&[u8; B]>::try_from(b), <&mut [f32; N]>::try_from(o)) {
            f(b, o);
        }
    }
}

/// Runs `f` on each `N`-value block and its `B` output bytes.
#[inline]
fn each_block_quant<const N: usize, const B: usize>(
    values: &[f32],
    out: &mut [u8],
    mut f: impl FnMut(&[f32; N], &mut [u8; B]),
) {
    for (v, o) in values.chunks_exact(N).zip(out.chunks_exact_mut(B)) {
        // chunks_exact yields exactly N and B elements: these always convert.
        if let (Ok(v), Ok(o)) = (<&[f32; N]>::try_from(v), <&mut [u8; B]>::try_from(o)) {
            f(v, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
    }

    #[test]
    fn every_quantizable_type_is_dequantizable() {
        for d in DType::ALL {
            assert!(!can_quantize(d) || can_dequantize(d), "{d}");
        }
    }
}
