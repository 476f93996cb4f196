//! Flash attention for prefill: causal (+ sliding window, GQA) attention of
//! T queries against the KV cache, tiled through workgroup memory with an
//! online softmax, for any T. Same inputs, semantics and CPU reference as
//! [`crate::attention`] (see there), but one sequence only: seq is one
//! `(start, row)` pair, I32 `[1, 2]` (a pair per query is a shape error;
//! batched decode is [`crate::attention`]'s). Tested against that naive
//! reference.
//!
//! The kernel (`flash_attn.wgsl`, layout notes there) is register-blocked
//! like the tiled matmul: a workgroup takes 64 rows (the queries of every
//! head sharing one kv head, so GQA loads each K/V tile once) against key
//! tiles of 64, each invocation 4 x 4 scores and 4 rows x 8 dimensions of
//! output; key tiles no row sees (above the causal diagonal, before the
//! window or the sequence's start) are skipped. On an H200 at llama-7b's T = 512: 0.136 ms per
//! layer, 15.7 TFLOP/s over the causal half (was 4.16 ms, 0.52;
//! docs/BENCHMARKS.md). Still f32: no cooperative-matrix variant yet.

use crate::attention::{case, check_inputs, naive, AttnConfig, Dims, Params};
use crate::cases::OpCase;
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, log2, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/flash_attn.wgsl");

/// Invocations per workgroup, as a 16 x 16 grid: WebGPU's guaranteed
/// minimum, so every device runs every tile choice.
const WG: u32 = 256;

/// Rows (query heads x queries) and keys of a workgroup's tile, largest
/// first: bigger tiles reuse each staged K/V vec4 over more rows and each
/// Q vec4 over more keys. Multiples of 16 (the invocation grid's side).
const TILES: [FlashTile; 4] = [
    FlashTile { bq: 64, bk: 64 },
    FlashTile { bq: 64, bk: 32 },
    FlashTile { bq: 32, bk: 32 },
    FlashTile { bq: 16, bk: 16 },
];

/// A workgroup's tile: `bq` rows (queries of the heads sharing a kv head)
/// by `bk` keys; each a power of two from 16 to 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashTile {
    pub bq: u32,
    pub bk: u32,
}

/// A tile with its staging chunks: `dc4` vec4s of head dimensions per Q/K
/// chunk, `kc` keys per V chunk, `dv` output vec4s per row and invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    tile: FlashTile,
    dc4: u32,
    kc: u32,
    dv: u32,
}

impl Plan {
    /// vec4s of the buffer shared by the Q/K chunks and the V chunk.
    fn u_len(&self) -> u32 {
        let qk = (self.tile.bq + self.tile.bk) * (self.dc4 + 1);
        let v = self.kc * 16 * self.dv;
        qk.max(v)
    }

    /// Bytes of workgroup memory: that buffer, P (pitch bk + 1) and three
    /// f32 stats per row.
    fn bytes(&self) -> u64 {
        let FlashTile { bq, bk } = self.tile;
        16 * u64::from(self.u_len()) + 4 * u64::from(bq * (bk + 1) + 3 * bq)
    }

    /// The largest chunks of `tile` that fit in `limit` bytes for `hd`.
    fn fit(tile: FlashTile, hd: u32, limit: u32) -> Option<Plan> {
        // Whole rows of 64 dimensions per 16 invocations; a power of two so
        // the kernel shifts.
        let dv = hd.div_ceil(64).next_power_of_two();
        let dc4s = [8, 4, 2].into_iter().filter(|&d| d <= dv * 16);
        dc4s.flat_map(|dc4| {
            let kcs = [tile.bk, tile.bk / 2, tile.bk / 4, 8, 4, 2, 1];
            kcs.into_iter()
                .filter(move |&kc| kc <= tile.bk && kc > 0)
                .map(move |kc| Plan { tile, dc4, kc, dv })
        })
        .find(|p| p.bytes() <= u64::from(limit))
    }
}

/// Prefill attention over tiles of queries and keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashAttention {
    pub cfg: AttnConfig,
    /// Forces a tile (tests, tuning); `None` picks the first of [`TILES`]
    /// that fits the device's workgroup memory.
    pub tile: Option<FlashTile>,
}

impl FlashAttention {
    pub fn new(cfg: AttnConfig) -> FlashAttention {
        FlashAttention { cfg, tile: None }
    }
}

/// The `{{LOADERS}}` hole and the binding element types for `hd` and the
/// cache dtype: 4-element words when `hd` is a multiple of 4, single
/// elements (f32, or u32 pairs of f16) otherwise.
fn loaders(hd: u32, kv: DType) -> [(&'static str, String); 3] {
    let f16 = kv == DType::F16;
    if hd.is_multiple_of(4) {
        let kv_load = |b: &str| {
            if f16 {
                format!(
                    "fn ld_{b}(i: u32, n: u32) -> vec4<f32> {{\n    let w = {b}[i >> 2u];\n    \
                     return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));\n}}\n"
                )
            } else {
                format!("fn ld_{b}(i: u32, n: u32) -> vec4<f32> {{ return {b}[i >> 2u]; }}\n")
            }
        };
        let src = format!(
            "fn ld_q(i: u32, n: u32) -> vec4<f32> {{ return q[i >> 2u]; }}\n{}{}\
             fn st_out(i: u32, n: u32, x: vec4<f32>) {{ out[i >> 2u] = x; }}\n",
            kv_load("k"),
            kv_load("v")
        );
        let kv_t = if f16 { "vec2<u32>" } else { "vec4<f32>" };
        return [
            ("LOADERS", src),
            ("Q_T", "vec4<f32>".into()),
            ("KV_T", kv_t.into()),
        ];
    }
    let f32_load = |b: &str| {
        format!(
            "fn ld_{b}(i: u32, n: u32) -> vec4<f32> {{\n    var x = vec4<f32>({b}[i], 0.0, 0.0, 0.0);\n    \
             if n > 1u {{ x.y = {b}[i + 1u]; }}\n    if n > 2u {{ x.z = {b}[i + 2u]; }}\n    \
             if n > 3u {{ x.w = {b}[i + 3u]; }}\n    return x;\n}}\n"
        )
    };
    // An F16 cache has an even head_dim (check_inputs), so n is even.
    let f16_load = |b: &str| {
        format!(
            "fn ld_{b}(i: u32, n: u32) -> vec4<f32> {{\n    var hi = vec2<f32>(0.0);\n    \
             if n > 2u {{ hi = unpack2x16float({b}[(i >> 1u) + 1u]); }}\n    \
             return vec4<f32>(unpack2x16float({b}[i >> 1u]), hi);\n}}\n"
        )
    };
    let kv_load = if f16 { f16_load } else { f32_load };
    let src = format!(
        "{}{}{}fn st_out(i: u32, n: u32, x: vec4<f32>) {{\n    out[i] = x.x;\n    \
         if n > 1u {{ out[i + 1u] = x.y; }}\n    if n > 2u {{ out[i + 2u] = x.z; }}\n    \
         if n > 3u {{ out[i + 3u] = x.w; }}\n}}\n",
        f32_load("q"),
        kv_load("k"),
        kv_load("v")
    );
    let kv_t = if f16 { "u32" } else { "f32" };
    [
        ("LOADERS", src),
        ("Q_T", "f32".into()),
        ("KV_T", kv_t.into()),
    ]
}

/// [`check_inputs`], and seq one pair: prefill is one sequence.
fn check_one_sequence(op: &'static str, inputs: &[TensorDesc]) -> Result<Dims, OpError> {
    let d = check_inputs(op, inputs)?;
    if d.per_query {
        return Err(check::shape_err(
            op,
            inputs,
            "flash attention runs one sequence: seq must be [1, 2]",
        ));
    }
    Ok(d)
}

impl Op for FlashAttention {
    fn name(&self) -> &'static str {
        "flash_attention"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check_one_sequence(self.name(), inputs)?;
        Ok(inputs[0].clone())
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        naive(self.name(), self.cfg, inputs, out)
    }

    /// Every global access is guarded by the row, key and dimension bounds
    /// (ragged T, ctx, head_dim 5 and 6 in the op cases); workgroup-memory
    /// indices are bounded by the template constants.
    fn trusted(&self) -> bool {
        true
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let op = self.name();
        let d = check_one_sequence(op, inputs)?;
        let params = Params::new(op, inputs, d, self.cfg)?;
        let hd = check::dim_u32(op, inputs, d.head_dim)?;
        let limit = caps.max_workgroup_storage_bytes;
        let plan = match self.tile {
            Some(t) => {
                let ok = [t.bq, t.bk]
                    .iter()
                    .all(|&x| x.is_power_of_two() && (16..=64).contains(&x));
                ok.then(|| Plan::fit(t, hd, limit)).flatten()
            }
            None => TILES.iter().find_map(|&t| Plan::fit(t, hd, limit)),
        }
        .ok_or_else(|| OpError::Unsupported {
            op,
            what: format!(
                "a flash-attention tile ({:?}) in {limit} bytes of workgroup memory for head_dim {hd}",
                self.tile
            ),
        })?;
        // Rows and tiles stay within u32 (rows * HD is q's numel).
        let rows = params.n_q * params.group;
        let hv = 16 * plan.dv;
        let mut holes = vec![
            ("WG", u(WG)),
            ("HD", u(hd)),
            ("BQ", u(plan.tile.bq)),
            ("BK", u(plan.tile.bk)),
            ("DC4", u(plan.dc4)),
            ("DC4_SHIFT", u(log2(plan.dc4))),
            ("KC", u(plan.kc)),
            ("DV", u(plan.dv)),
            ("HV_SHIFT", u(log2(hv))),
            ("U_LEN", u(plan.u_len())),
        ];
        holes.extend(loaders(hd, d.kv_dtype));
        let source = fill(WGSL, &holes);
        let items = rows.div_ceil(plan.tile.bq) * params.n_kv;
        let kv_key = if d.kv_dtype == DType::F16 {
            "f16"
        } else {
            "f32"
        };
        Ok(GpuKernel {
            key: format!(
                "flash_attn.hd{hd}.{kv_key}.q{}k{}d{}v{}",
                plan.tile.bq,
                plan.tile.bk,
                4 * plan.dc4,
                plan.kc
            ),
            source: source.into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups: grid(items, caps.max_workgroups_per_dimension),
        })
    }
}

/// Ragged prefill shapes: T in {1, 3, 17, 64, 130}, head_dim 64 (SmolLM2) and
/// 128, SmolLM2's GQA (9 heads on 3), a pre-filled cache (row > 0 mostly)
/// holding a sequence that starts past row 0 (mostly; a start after the
/// row leaves the first queries nothing to see),
/// with and without a sliding window, small tiles forced so tiles of keys
/// and rows both go ragged, odd head_dims, and F16 caches; then
/// prefill-sized ones (T 64 to 200, a few hundred keys, llama's 32 heads on
/// 8) with each tile.
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
        cases.push(case(FlashAttention::new(causal), shape, DType::F32, false));
        cases.push(case(
            FlashAttention::new(causal.window(29)),
            shape,
            DType::F32,
            false,
        ));
    }
    let tiled = |cfg, bq, bk| FlashAttention {
        tile: Some(FlashTile { bq, bk }),
        ..FlashAttention::new(cfg)
    };
    // The smallest tile with odd head_dims (F32, unaligned loads) and an
    // F16 cache of head_dim 6 (u32 pairs).
    for (hd, cache) in [(5, DType::F32), (6, DType::F16)] {
        let cfg = AttnConfig::causal(hd).window(6);
        cases.push(case(tiled(cfg, 16, 16), (19, 4, 2, hd, 30), cache, false));
    }
    let causal = FlashAttention::new(AttnConfig::causal(128));
    cases.push(case(causal, (64, 9, 3, 128, 100), DType::F16, false));
    // Prefill: (T, heads, kv heads, head_dim, ctx, window, cache).
    for (t, h, kv, hd, ctx, window, cache) in [
        (64, 9, 3, 64, 300, 0, DType::F32),
        (200, 9, 3, 64, 260, 0, DType::F32),
        (150, 9, 3, 64, 400, 64, DType::F16),
        (131, 32, 8, 128, 300, 0, DType::F32),
        (131, 32, 8, 128, 300, 100, DType::F32),
        (77, 32, 8, 128, 250, 0, DType::F16),
        (100, 8, 8, 128, 333, 40, DType::F16),
    ] {
        let cfg = AttnConfig::causal(hd).window(window);
        cases.push(case(
            FlashAttention::new(cfg),
            (t, h, kv, hd, ctx),
            cache,
            false,
        ));
    }
    for (bq, bk) in [(64, 64), (64, 32), (32, 64), (32, 32), (16, 32)] {
        let cfg = AttnConfig::causal(128).window(50);
        cases.push(case(
            tiled(cfg, bq, bk),
            (97, 9, 3, 128, 220),
            DType::F32,
            false,
        ));
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_tile_fits_every_device_up_to_head_dim_256() {
        for limit in [16 << 10, 32 << 10, 48 << 10] {
            for hd in [5, 64, 80, 128, 256] {
                let plan = TILES.iter().find_map(|&t| Plan::fit(t, hd, limit));
                let plan = plan.unwrap_or_else(|| panic!("hd {hd} in {limit} bytes"));
                assert!(plan.bytes() <= u64::from(limit));
            }
        }
        // NVIDIA's 48 KiB at head_dim 128: the largest tile, Q/K chunks of
        // 32 dimensions, V chunks of 32 keys (the benchmarked kernel).
        let plan = TILES.iter().find_map(|&t| Plan::fit(t, 128, 48 << 10));
        let want = Plan {
            tile: FlashTile { bq: 64, bk: 64 },
            dc4: 8,
            kc: 32,
            dv: 2,
        };
        assert_eq!(plan, Some(want));
    }

    #[test]
    fn one_sequence_only() {
        let op = FlashAttention::new(AttnConfig::causal(8));
        let mut inputs = crate::attention::inputs((3, 4, 2, 8, 20), DType::F32, 1);
        assert!(op.output(&inputs).is_ok());
        inputs[3] = TensorDesc::new(DType::I32, [3, 2]);
        let err = op.output(&inputs).unwrap_err();
        assert!(matches!(err, OpError::Shape { .. }), "{err}");
        let err = op.gpu(&inputs, &inputs[0], &Caps::baseline()).unwrap_err();
        assert!(matches!(err, OpError::Shape { .. }), "{err}");
    }
}
