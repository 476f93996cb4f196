//! How tensors are laid out in GPU buffers.
//!
//! Plain dtypes (F32, F16, BF16, I32, ...) keep their host bytes. GGUF's
//! quantized blocks are 18, 20, 22, 24, 34, 144, 176 or 210 bytes: not
//! 4-aligned, so a WGSL kernel (which reads `u32` words at best) would have
//! to stitch every field out of straddling words. At upload the engine calls
//! [`to_gpu`], which splits every block into its fields and stores each
//! field of every block contiguously ("structure of arrays"):
//!
//! ```text
//! section 0: field 0 of block 0, field 0 of block 1, ..., field 0 of block B-1
//! section 1: field 1 of block 0, ...
//! ...
//! ```
//!
//! Blocks are numbered in storage order over the whole tensor (a row of `K`
//! values is `K / block_size` consecutive blocks, rows follow each other), so
//! block `b` of a `[N, K]` weight is row `b / (K / bs)`. Every section starts
//! at a multiple of 16 bytes, so kernels can bind the buffer as
//! `array<vec4<u32>>` and load the quants of a block with whole vec4s; the
//! quant section comes first and its per-block size is a multiple of 16
//! bytes for every type. The fields, in section order (byte offset and length
//! within the ggml block, `ggml-common.h`):
//!
//! | type | section 0      | section 1       | section 2       | section 3      |
//! |------|----------------|-----------------|-----------------|----------------|
//! | Q4_0 | qs  (2, 16)    | d    (0, 2)     |                 |                |
//! | Q4_1 | qs  (4, 16)    | d,m  (0, 4)     |                 |                |
//! | Q5_0 | qs  (6, 16)    | qh   (2, 4)     | d    (0, 2)     |                |
//! | Q5_1 | qs  (8, 16)    | qh   (4, 4)     | d,m  (0, 4)     |                |
//! | Q8_0 | qs  (2, 32)    | d    (0, 2)     |                 |                |
//! | Q4_K | qs  (16, 128)  | scales (4, 12)  | d,dmin (0, 4)   |                |
//! | Q5_K | qs  (48, 128)  | qh   (16, 32)   | scales (4, 12)  | d,dmin (0, 4)  |
//! | Q6_K | ql  (0, 128)   | qh   (128, 64)  | scales (192, 16)| d    (208, 2)  |
//!
//! Section `s` starts at byte `offset_s = sum over t < s of
//! round_up(B * len_t, 16)`; field bytes are copied unchanged (little-endian
//! f16s stay f16s: a `d,m` pair is one `u32` for `unpack2x16float`, a lone `d`
//! is half `h` of word `h / 2`). The total is at most `15 * 4` bytes more
//! than the GGUF size. [`section_offsets`] gives kernels the offsets, in
//! `u32` words.

use std::borrow::Cow;

use crate::dtype::DType;
use crate::tensor::TensorDesc;

/// Errors converting a tensor to or from its GPU layout.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LayoutError {
    #[error("tensor {desc:?}: expected {expected:?} host bytes, got {got}")]
    Size {
        desc: TensorDesc,
        expected: Option<usize>,
        got: usize,
    },
    #[error("tensor {desc:?}: expected {expected:?} GPU bytes, got {got}")]
    GpuSize {
        desc: TensorDesc,
        expected: Option<usize>,
        got: usize,
    },
}

/// One field of a quantized block: `(byte offset, byte length)`.
type Field = (usize, usize);

/// The fields of `dtype`'s block in section order (see the table above), or
/// `None` for dtypes stored as they are.
pub fn fields(dtype: DType) -> Option<&'static [Field]> {
    Some(match dtype {
        DType::Q4_0 => &[(2, 16), (0, 2)],
        DType::Q4_1 => &[(4, 16), (0, 4)],
        DType::Q5_0 => &[(6, 16), (2, 4), (0, 2)],
        DType::Q5_1 => &[(8, 16), (4, 4), (0, 4)],
        DType::Q8_0 => &[(2, 32), (0, 2)],
        DType::Q4K => &[(16, 128), (4, 12), (0, 4)],
        DType::Q5K => &[(48, 128), (16, 32), (4, 12), (0, 4)],
        DType::Q6K => &[(0, 128), (128, 64), (192, 16), (208, 2)],
        _ => return None,
    })
}

/// True when [`to_gpu`] repacks `dtype` (kernels must read the sections).
pub fn is_repacked(dtype: DType) -> bool {
    fields(dtype).is_some()
}

/// Byte offset of every section and the total size, for `blocks` blocks.
fn sections(fields: &[Field], blocks: usize) -> Option<(Vec<usize>, usize)> {
    let mut offsets = Vec::with_capacity(fields.len());
    let mut at = 0usize;
    for &(_, len) in fields {
        offsets.push(at);
        at = at.checked_add(blocks.checked_mul(len)?.checked_next_multiple_of(16)?)?;
    }
    Some((offsets, at))
}

/// Blocks the tensor holds, if its rows are whole blocks.
fn blocks(desc: &TensorDesc) -> Option<usize> {
    desc.byte_size()?;
    Some(desc.numel()? / desc.dtype.block_size())
}

/// Where each section of a repacked tensor starts, in `u32` words (always
/// multiples of 4); `None` for dtypes stored as they are or on overflow.
pub fn section_offsets(desc: &TensorDesc) -> Option<Vec<usize>> {
    let (offsets, _) = sections(fields(desc.dtype)?, blocks(desc)?)?;
    Some(offsets.into_iter().map(|o| o / 4).collect())
}

/// Bytes the tensor takes on the GPU, or `None` on overflow or a ragged row.
pub fn gpu_bytes(desc: &TensorDesc) -> Option<usize> {
    match fields(desc.dtype) {
        Some(f) => Some(sections(f, blocks(desc)?)?.1),
        None => desc.byte_size(),
    }
}

/// The tensor's host bytes (`desc.dtype`'s GGUF layout) in GPU layout.
pub fn to_gpu<'a>(desc: &TensorDesc, host: &'a [u8]) -> Result<Cow<'a, [u8]>, LayoutError> {
    if desc.byte_size() != Some(host.len()) {
        return Err(LayoutError::Size {
            desc: desc.clone(),
            expected: desc.byte_size(),
            got: host.len(),
        });
    }
    let Some(f) = fields(desc.dtype) else {
        return Ok(Cow::Borrowed(host));
    };
    let bb = desc.dtype.block_bytes();
    let n = host.len() / bb;
    let (offsets, total) = sections(f, n).ok_or_else(|| LayoutError::Size {
        desc: desc.clone(),
        expected: None,
        got: host.len(),
    })?;
    let mut out = vec![0u8; total];
    for (&(at, len), &base) in f.iter().zip(&offsets) {
        for (b, block) in host.chunks_exact(bb).enumerate() {
            out[base + b * len..][..len].copy_from_slice(&block[at..at + len]);
        }
    }
    Ok(Cow::Owned(out))
}

/// The inverse of [`to_gpu`]: GPU-layout bytes back to GGUF blocks.
pub fn from_gpu<'a>(desc: &TensorDesc, gpu: &'a [u8]) -> Result<Cow<'a, [u8]>, LayoutError> {
    let expected = gpu_bytes(desc);
    if expected != Some(gpu.len()) {
        return Err(LayoutError::GpuSize {
            desc: desc.clone(),
            expected,
            got: gpu.len(),
        });
    }
    let Some(f) = fields(desc.dtype) else {
        return Ok(Cow::Borrowed(gpu));
    };
    let bb = desc.dtype.block_bytes();
    let n = blocks(desc).unwrap_or(0);
    let (offsets, _) = sections(f, n).unwrap_or_default();
    let mut out = vec![0u8; n * bb];
    for (&(at, len), &base) in f.iter().zip(&offsets) {
        for (b, block) in out.chunks_exact_mut(bb).enumerate() {
            block[at..at + len].copy_from_slice(&gpu[base + b * len..][..len]);
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn fields_cover_every_block_byte_once() {
        for d in DType::ALL {
            let Some(f) = fields(d) else { continue };
            let mut seen = vec![0; d.block_bytes()];
            for &(at, len) in f {
                seen[at..at + len].iter_mut().for_each(|s| *s += 1);
            }
            assert!(seen.iter().all(|&s| s == 1), "{d}: {seen:?}");
            // The quant section is whole vec4s per block.
            assert_eq!(f[0].1 % 16, 0, "{d}");
        }
    }

    #[test]
    fn round_trips_every_type_on_random_blocks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for d in DType::ALL {
            for shape in [vec![1, 256], vec![3, 512], vec![2, 5, 768]] {
                let desc = TensorDesc::new(d, shape);
                let Some(size) = desc.byte_size() else {
                    continue;
                };
                let host: Vec<u8> = (0..size).map(|_| rng.random()).collect();
                let gpu = to_gpu(&desc, &host).unwrap();
                assert_eq!(Some(gpu.len()), gpu_bytes(&desc), "{desc:?}");
                assert!(gpu.len().is_multiple_of(16) || !is_repacked(d));
                assert_eq!(from_gpu(&desc, &gpu).unwrap(), host, "{desc:?}");
            }
        }
    }

    #[test]
    fn q4_0_sections_sit_where_documented() {
        // Two blocks: d = 0x0201 / 0x1211, qs = 3.. / 0x13...
        let desc = TensorDesc::new(DType::Q4_0, [1, 64]);
        let mut host = vec![0u8; 36];
        for (b, block) in host.chunks_exact_mut(18).enumerate() {
            for (i, x) in block.iter_mut().enumerate() {
                *x = (16 * b + i + 1) as u8;
            }
        }
        let gpu = to_gpu(&desc, &host).unwrap();
        assert_eq!(section_offsets(&desc), Some(vec![0, 8]));
        assert_eq!(&gpu[..16], &host[2..18]);
        assert_eq!(&gpu[16..32], &host[20..36]);
        assert_eq!(&gpu[32..36], &[1, 2, 17, 18]);
        assert_eq!(gpu.len(), 48);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let desc = TensorDesc::new(DType::Q8_0, [2, 32]);
        assert!(to_gpu(&desc, &[0; 67]).is_err());
        assert!(from_gpu(&desc, &[0; 68]).is_err());
    }
}
