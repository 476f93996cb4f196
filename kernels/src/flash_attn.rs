//! Flash attention for prefill: causal (+ sliding window, GQA) attention of
//! T queries against the KV cache, tiled through workgroup memory with an
//! online softmax, for any T. Same inputs, semantics and CPU reference as
//! [`crate::attention`] (see there); tested against that naive reference.

use crate::attention::{case, check_inputs, io_hole, naive, AttnConfig, Params};
use crate::cases::OpCase;
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/flash_attn.wgsl");

/// Invocations per workgroup: WebGPU's guaranteed minimum, so every device
/// runs every tile choice.
const WG: u32 = 256;

/// Query x key tiles, largest first: bigger query tiles reuse each K/V tile
/// over more queries; the first that fits the device's workgroup memory wins.
const TILES: [(u32, u32); 5] = [(32, 32), (16, 32), (16, 16), (16, 8), (8, 8)];

/// Workgroup memory of a `bq x bk` tile for `hd`: Q, K-or-V, S, P, row max.
fn tile_bytes(bq: u32, bk: u32, hd: u32) -> u64 {
    4 * (u64::from(bq) * u64::from(hd)
        + u64::from(bk) * u64::from(hd)
        + 2 * u64::from(bq * bk)
        + u64::from(bq))
}

/// Prefill attention over tiles of queries and keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashAttention {
    pub cfg: AttnConfig,
    /// Forces a `(queries, keys)` tile (tests, tuning); `None` picks from
    /// [`TILES`] by the device's workgroup memory.
    pub tile: Option<(u32, u32)>,
}

impl FlashAttention {
    pub fn new(cfg: AttnConfig) -> FlashAttention {
        FlashAttention { cfg, tile: None }
    }
}

impl Op for FlashAttention {
    fn name(&self) -> &'static str {
        "flash_attention"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check_inputs(self.name(), inputs)?;
        Ok(inputs[0].clone())
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        naive(self.name(), self.cfg, inputs, out)
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let op = self.name();
        let d = check_inputs(op, inputs)?;
        let params = Params::new(op, inputs, d, self.cfg)?;
        let hd = check::dim_u32(op, inputs, d.head_dim)?;
        let fits = |&(bq, bk): &(u32, u32)| {
            tile_bytes(bq, bk, hd) <= u64::from(caps.max_workgroup_storage_bytes)
        };
        let (bq, bk) = match self.tile {
            // Rows must split WG evenly; an empty key tile would never advance.
            Some(t) if fits(&t) && t.0 > 0 && WG.is_multiple_of(t.0) && t.1 > 0 => t,
            Some(t) => {
                return Err(OpError::Unsupported {
                    op,
                    what: format!("tile {t:?} for head_dim {hd}"),
                })
            }
            None => TILES
                .iter()
                .copied()
                .find(fits)
                .ok_or_else(|| OpError::Unsupported {
                    op,
                    what: format!(
                        "{} bytes of workgroup memory for head_dim {hd}",
                        tile_bytes(8, 8, hd)
                    ),
                })?,
        };
        let dpt = hd.div_ceil(WG / bq);
        let (io, kv_key) = io_hole(d.kv_dtype);
        let source = fill(
            WGSL,
            &[
                io,
                ("WG", u(WG)),
                ("BQ", u(bq)),
                ("BK", u(bk)),
                ("HD", u(hd)),
                ("DPT", u(dpt)),
            ],
        );
        let items = params.n_q.div_ceil(bq) * params.n_head;
        Ok(GpuKernel {
            key: format!("flash_attn.hd{hd}.{kv_key}.q{bq}k{bk}"),
            source: source.into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups: grid(items, caps.max_workgroups_per_dimension),
        })
    }
}

/// Ragged prefill shapes: T in {1, 3, 17, 64, 130}, head_dim 64 (SmolLM2) and
/// 128, SmolLM2's GQA (9 heads on 3), a pre-filled cache (pos > 0 mostly),
/// with and without a sliding window, the small tile forced so tiles of keys
/// and queries both go ragged, and F16 caches.
pub fn cases() -> Vec<OpCase> {
    let mut cases = Vec::new();
    for (t, hd) in [
        (1, 64),
        (3, 128),
        (17, 64),
        (64, 128),
        (130, 64),
        (130, 128),
    ] {
        let shape = (t, 9, 3, hd, t + 45);
        let causal = AttnConfig::causal(hd);
        cases.push(case(FlashAttention::new(causal), shape, DType::F32));
        cases.push(case(
            FlashAttention::new(causal.window(29)),
            shape,
            DType::F32,
        ));
    }
    // Tiles of 8 x 8 with an odd head_dim (F32) and an F16 cache.
    for (hd, cache) in [(5, DType::F32), (6, DType::F16)] {
        let cfg = AttnConfig::causal(hd).window(6);
        let small = FlashAttention {
            tile: Some((8, 8)),
            ..FlashAttention::new(cfg)
        };
        cases.push(case(small, (19, 4, 2, hd, 30), cache));
    }
    let causal = FlashAttention::new(AttnConfig::causal(128));
    cases.push(case(causal, (64, 9, 3, 128, 100), DType::F16));
    cases
}
