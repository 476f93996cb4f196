//! Element types: plain floats and the GGML block-quantized types.
//!
//! One table (`DType::info`) gives every type's GGUF id, name, block size and
//! bytes per block; loaders, the engine and the kernels all read it.
//! Ids and layouts follow ggml's `ggml_type` enum and `ggml-common.h`.

use std::fmt;

/// The storage type of a tensor.
///
/// Block types store `block_size` consecutive elements of a row in
/// `block_bytes` bytes; a row's length must be a multiple of `block_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I8,
    I16,
    I32,
    I64,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ2XXS,
    IQ2XS,
    IQ3XXS,
    IQ1S,
    IQ4NL,
    IQ3S,
    IQ2S,
    IQ4XS,
    IQ1M,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// Static facts about a [`DType`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DTypeInfo {
    /// The id GGUF files use (`ggml_type`).
    pub ggml_id: u32,
    /// The name llama.cpp prints (`q4_0`, `f16`, ...).
    pub name: &'static str,
    /// Elements per block (1 for plain types).
    pub block_size: usize,
    /// Bytes per block.
    pub block_bytes: usize,
}

const fn info(
    ggml_id: u32,
    name: &'static str,
    block_size: usize,
    block_bytes: usize,
) -> DTypeInfo {
    DTypeInfo {
        ggml_id,
        name,
        block_size,
        block_bytes,
    }
}

impl DType {
    /// Every dtype, in GGML id order.
    pub const ALL: [DType; 32] = [
        DType::F32,
        DType::F16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::Q2K,
        DType::Q3K,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::Q8K,
        DType::IQ2XXS,
        DType::IQ2XS,
        DType::IQ3XXS,
        DType::IQ1S,
        DType::IQ4NL,
        DType::IQ3S,
        DType::IQ2S,
        DType::IQ4XS,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F64,
        DType::IQ1M,
        DType::BF16,
        DType::TQ1_0,
        DType::TQ2_0,
        DType::MXFP4,
    ];

    /// The table: GGML id, name, block size, bytes per block.
    pub const fn info(self) -> DTypeInfo {
        match self {
            DType::F32 => info(0, "f32", 1, 4),
            DType::F16 => info(1, "f16", 1, 2),
            DType::Q4_0 => info(2, "q4_0", 32, 18),
            DType::Q4_1 => info(3, "q4_1", 32, 20),
            DType::Q5_0 => info(6, "q5_0", 32, 22),
            DType::Q5_1 => info(7, "q5_1", 32, 24),
            DType::Q8_0 => info(8, "q8_0", 32, 34),
            DType::Q8_1 => info(9, "q8_1", 32, 36),
            DType::Q2K => info(10, "q2_k", 256, 84),
            DType::Q3K => info(11, "q3_k", 256, 110),
            DType::Q4K => info(12, "q4_k", 256, 144),
            DType::Q5K => info(13, "q5_k", 256, 176),
            DType::Q6K => info(14, "q6_k", 256, 210),
            DType::Q8K => info(15, "q8_k", 256, 292),
            DType::IQ2XXS => info(16, "iq2_xxs", 256, 66),
            DType::IQ2XS => info(17, "iq2_xs", 256, 74),
            DType::IQ3XXS => info(18, "iq3_xxs", 256, 98),
            DType::IQ1S => info(19, "iq1_s", 256, 50),
            DType::IQ4NL => info(20, "iq4_nl", 32, 18),
            DType::IQ3S => info(21, "iq3_s", 256, 110),
            DType::IQ2S => info(22, "iq2_s", 256, 82),
            DType::IQ4XS => info(23, "iq4_xs", 256, 136),
            DType::I8 => info(24, "i8", 1, 1),
            DType::I16 => info(25, "i16", 1, 2),
            DType::I32 => info(26, "i32", 1, 4),
            DType::I64 => info(27, "i64", 1, 8),
            DType::F64 => info(28, "f64", 1, 8),
            DType::IQ1M => info(29, "iq1_m", 256, 56),
            DType::BF16 => info(30, "bf16", 1, 2),
            DType::TQ1_0 => info(34, "tq1_0", 256, 54),
            DType::TQ2_0 => info(35, "tq2_0", 256, 66),
            DType::MXFP4 => info(39, "mxfp4", 32, 17),
        }
    }

    /// The dtype with this GGML id, if kiln knows it.
    pub fn from_ggml_id(id: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.info().ggml_id == id)
    }

    /// The dtype with this (case-insensitive) name, e.g. `q4_k` or `Q4_K`.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.info().name.eq_ignore_ascii_case(name))
    }

    pub const fn name(self) -> &'static str {
        self.info().name
    }

    pub const fn block_size(self) -> usize {
        self.info().block_size
    }

    pub const fn block_bytes(self) -> usize {
        self.info().block_bytes
    }

    /// True for the block-quantized types.
    pub const fn is_quantized(self) -> bool {
        self.info().block_size > 1
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number
    /// of blocks or the product overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let info = self.info();
        if !n.is_multiple_of(info.block_size) {
            return None;
        }
        (n / info.block_size).checked_mul(info.block_bytes)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for d in DType::ALL {
            assert_eq!(DType::from_ggml_id(d.info().ggml_id), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_ggml_id(4), None); // removed Q4_2
    }

    #[test]
    fn block_sizes_match_ggml() {
        assert_eq!(DType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(DType::Q6K.bytes_for(256), Some(210));
        assert_eq!(DType::Q4_0.bytes_for(33), None);
        assert_eq!(DType::F32.bytes_for(usize::MAX), None);
    }
}
