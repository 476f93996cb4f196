//! LoRA adapters: Hugging Face PEFT directories and llama.cpp GGUF LoRA
//! files, loaded into one f32 form and checked against a base model.
//!
//! A LoRA adapter (Hu et al. 2021, arXiv:2106.09685) adds a low-rank
//! update to a linear layer `y = W x` with `W` `[out, in]`:
//!
//! ```text
//! y = W x + scale · B (A x)      A [r, in], B [out, r], scale = alpha / r
//! ```
//!
//! Both formats store `A` and `B` in that row-major layout (PEFT's
//! `nn.Linear` weights; llama.cpp's `lora_a` has `ne = [in, r]`, which
//! kiln's GGUF reader reports reversed, `[r, in]`), so the only difference
//! between them is naming and where `alpha` lives. rsLoRA (Kalajdzievski
//! 2023, arXiv:2312.03732) uses `alpha / sqrt(r)` instead.
//!
//! Loading (`LoraAdapter::open`) checks everything the adapter says about
//! itself: pairs complete, ranks consistent, dtypes and modules supported.
//! [`LoraAdapter::validate`] then checks it fits a base model. Applying it is
//! the model's business; [`LoraTarget::delta_weight`] is the CPU spec.

mod base;
mod config;
mod error;
mod gguf;
mod merge;
mod order;
mod peft;
mod write;

use std::fmt;
use std::path::Path;

use kiln_kernels::{quant, CpuTensor, DType, TensorDesc};

pub use base::BaseShapes;
pub use config::{PeftConfig, TargetModules};
pub use error::{LoraError, LoraErrorKind};
pub use merge::{
    merge_gguf, merge_gguf_to, merge_weight, MergeOptions, MergeOutType, MergeReport, MergeSource,
    MergedTensor, MERGED_COUNT_KEY,
};
pub use order::QkOrder;
pub use write::{write_gguf, write_peft};

/// The PEFT config's file name.
pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
/// The PEFT weights' file name.
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's pickle weights, which kiln refuses.
pub const PEFT_PICKLE_FILE: &str = "adapter_model.bin";

/// A linear layer of a transformer block that an adapter can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraModule {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraModule {
    pub const ALL: [LoraModule; 7] = [
        LoraModule::Q,
        LoraModule::K,
        LoraModule::V,
        LoraModule::O,
        LoraModule::Gate,
        LoraModule::Up,
        LoraModule::Down,
    ];

    /// llama.cpp's name (`attn_q`): the base weight is `blk.{i}.attn_q.weight`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            LoraModule::Q => "attn_q",
            LoraModule::K => "attn_k",
            LoraModule::V => "attn_v",
            LoraModule::O => "attn_output",
            LoraModule::Gate => "ffn_gate",
            LoraModule::Up => "ffn_up",
            LoraModule::Down => "ffn_down",
        }
    }

    /// Hugging Face's name (`q_proj`), what PEFT's `target_modules` lists.
    pub fn hf_name(self) -> &'static str {
        match self {
            LoraModule::Q => "q_proj",
            LoraModule::K => "k_proj",
            LoraModule::V => "v_proj",
            LoraModule::O => "o_proj",
            LoraModule::Gate => "gate_proj",
            LoraModule::Up => "up_proj",
            LoraModule::Down => "down_proj",
        }
    }

    /// The HF submodule holding it: `self_attn` or `mlp`.
    pub fn hf_parent(self) -> &'static str {
        match self {
            LoraModule::Q | LoraModule::K | LoraModule::V | LoraModule::O => "self_attn",
            LoraModule::Gate | LoraModule::Up | LoraModule::Down => "mlp",
        }
    }

    pub fn from_gguf_name(name: &str) -> Option<LoraModule> {
        LoraModule::ALL.into_iter().find(|m| m.gguf_name() == name)
    }

    pub fn from_hf_name(name: &str) -> Option<LoraModule> {
        LoraModule::ALL.into_iter().find(|m| m.hf_name() == name)
    }

    /// The base weight's GGUF name, `blk.{layer}.attn_q.weight`.
    pub fn gguf_weight(self, layer: usize) -> String {
        format!("blk.{layer}.{}.weight", self.gguf_name())
    }

    /// The module's HF path, `model.layers.{layer}.self_attn.q_proj`: the
    /// key PEFT matches `target_modules`, `rank_pattern` and `alpha_pattern`
    /// against.
    pub fn hf_key(self, layer: usize) -> String {
        format!(
            "model.layers.{layer}.{}.{}",
            self.hf_parent(),
            self.hf_name()
        )
    }
}

impl fmt::Display for LoraModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.gguf_name())
    }
}

/// One of a pair: `A` (down-projection, `[r, in]`) or `B` (`[out, r]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraHalf {
    A,
    B,
}

/// Where an adapter came from (and so how its tensors are named).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFormat {
    /// A PEFT directory: `adapter_config.json` + `adapter_model.safetensors`.
    Peft,
    /// A llama.cpp LoRA GGUF (`general.type = adapter`).
    Gguf,
}

impl LoraFormat {
    /// A tensor's name in this format:
    /// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` or
    /// `blk.3.attn_q.weight.lora_a`. The readers accept only these spellings,
    /// so error messages can name the file's tensors exactly.
    pub fn tensor_name(self, layer: usize, module: LoraModule, half: LoraHalf) -> String {
        match (self, half) {
            (LoraFormat::Peft, LoraHalf::A) => {
                format!("base_model.model.{}.lora_A.weight", module.hf_key(layer))
            }
            (LoraFormat::Peft, LoraHalf::B) => {
                format!("base_model.model.{}.lora_B.weight", module.hf_key(layer))
            }
            (LoraFormat::Gguf, LoraHalf::A) => format!("{}.lora_a", module.gguf_weight(layer)),
            (LoraFormat::Gguf, LoraHalf::B) => format!("{}.lora_b", module.gguf_weight(layer)),
        }
    }
}

/// The update to one linear layer: `W += scale · B A`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTarget {
    /// Transformer block index (`blk.{layer}`, `model.layers.{layer}`).
    pub layer: usize,
    pub module: LoraModule,
    /// Down-projection, F32 `[rank, in]`.
    pub a: CpuTensor,
    /// Up-projection, F32 `[out, rank]`.
    pub b: CpuTensor,
    /// The factor to apply: `alpha / rank` for this target (rsLoRA:
    /// `alpha / sqrt(rank)`), with PEFT's `rank_pattern` / `alpha_pattern`
    /// and llama.cpp's per-tensor rank honoured. This, not
    /// [`LoraAdapter::scale`], is what to multiply `B A` by.
    pub scale: f32,
}

impl LoraTarget {
    /// A target after checking the pair: both F32 and 2-D, rank at least 1
    /// and the same in `a` and `b`, scale finite.
    pub fn new(
        layer: usize,
        module: LoraModule,
        a: CpuTensor,
        b: CpuTensor,
        scale: f32,
    ) -> Result<LoraTarget, LoraError> {
        let t = LoraTarget {
            layer,
            module,
            a,
            b,
            scale,
        };
        t.check(LoraFormat::Gguf)?;
        Ok(t)
    }

    /// `r`: rows of `a`.
    pub fn rank(&self) -> usize {
        self.a.shape().first().copied().unwrap_or(0)
    }

    /// Columns of `a`: the base weight's input size.
    pub fn in_features(&self) -> usize {
        self.a.shape().get(1).copied().unwrap_or(0)
    }

    /// Rows of `b`: the base weight's output size.
    pub fn out_features(&self) -> usize {
        self.b.shape().first().copied().unwrap_or(0)
    }

    /// `scale · B A`, F32 `[out, in]`: the dense update to the base weight.
    /// A plain-loop reference (f64 sums) to check fast LoRA kernels against.
    pub fn delta_weight(&self) -> Result<CpuTensor, LoraError> {
        self.check(LoraFormat::Gguf)?;
        let (r, n_in, n_out) = (self.rank(), self.in_features(), self.out_features());
        // check() proved both are F32.
        let a = self.a.as_f32().unwrap_or_default(); // [r, in]
        let b = self.b.as_f32().unwrap_or_default(); // [out, r]
        let mut out = vec![0f32; n_out * n_in]; // [out, in]
        for o in 0..n_out {
            for i in 0..n_in {
                let sum: f64 = (0..r)
                    .map(|k| f64::from(b[o * r + k]) * f64::from(a[k * n_in + i]))
                    .sum();
                out[o * n_in + i] = (sum * f64::from(self.scale)) as f32;
            }
        }
        CpuTensor::from_f32([n_out, n_in], out).map_err(|e| {
            LoraError::new(LoraErrorKind::Decode {
                tensor: self.module.gguf_weight(self.layer),
                message: e.to_string(),
            })
        })
    }

    /// The pair's invariants; errors name the tensors as `format` spells them.
    fn check(&self, format: LoraFormat) -> Result<(), LoraError> {
        let name = |half| format.tensor_name(self.layer, self.module, half);
        for (t, half, expected) in [
            (&self.a, LoraHalf::A, "[rank, in]"),
            (&self.b, LoraHalf::B, "[out, rank]"),
        ] {
            if t.dtype() != DType::F32 {
                return Err(LoraErrorKind::UnsupportedDtype {
                    tensor: name(half),
                    dtype: t.dtype().to_string(),
                    expected: "F32 once loaded",
                }
                .into());
            }
            if t.shape().len() != 2 {
                return Err(LoraErrorKind::BadShape {
                    tensor: name(half),
                    shape: t.shape().to_vec(),
                    expected,
                }
                .into());
            }
        }
        check_pair(
            (&name(LoraHalf::A), self.a.shape()),
            (&name(LoraHalf::B), self.b.shape()),
        )?;
        if !self.scale.is_finite() {
            return Err(LoraErrorKind::NonFiniteAlpha {
                what: format!("the scale of '{}'", name(LoraHalf::A)),
                value: f64::from(self.scale),
            }
            .into());
        }
        Ok(())
    }
}

/// Rank checks shared by the readers and validation: `a` `[r, in]` and `b`
/// `[out, r]`, both 2-D, with `r >= 1` and the same in both.
fn check_pair(a: (&str, &[usize]), b: (&str, &[usize])) -> Result<(), LoraError> {
    let (a_name, a_shape) = a;
    let (b_name, b_shape) = b;
    for (name, shape, expected) in [
        (a_name, a_shape, "[rank, in]"),
        (b_name, b_shape, "[out, rank]"),
    ] {
        if shape.len() != 2 {
            return Err(LoraErrorKind::BadShape {
                tensor: name.to_string(),
                shape: shape.to_vec(),
                expected,
            }
            .into());
        }
    }
    if a_shape[0] != b_shape[1] {
        return Err(LoraErrorKind::RankMismatch {
            a: a_name.to_string(),
            a_shape: a_shape.to_vec(),
            b: b_name.to_string(),
            b_shape: b_shape.to_vec(),
        }
        .into());
    }
    if a_shape[0] == 0 {
        return Err(LoraErrorKind::RankZero {
            what: format!("the rank of '{a_name}' {a_shape:?}"),
        }
        .into());
    }
    Ok(())
}

/// A tensor's bytes as F32 `shape`, widening F16/BF16 and dequantizing
/// Q8_0 on the CPU (adapters are small: a rank-16 pair for a 4096-wide
/// layer is 0.5 MiB in f32).
fn decode(name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<CpuTensor, LoraError> {
    let fail = |message: String| {
        LoraError::new(LoraErrorKind::Decode {
            tensor: name.to_string(),
            message,
        })
    };
    let t = CpuTensor::from_bytes(TensorDesc::new(dtype, shape), bytes.to_vec())
        .map_err(|e| fail(e.to_string()))?;
    if dtype == DType::F32 {
        return Ok(t);
    }
    quant::dequantize_tensor(&t).map_err(|e| fail(e.to_string()))
}

/// A loaded adapter: every target as f32 `A`/`B` with its own scale.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// The PEFT directory's name, or the GGUF file's stem.
    pub name: String,
    pub format: LoraFormat,
    /// `lora_alpha` (PEFT) or `adapter.lora.alpha` (GGUF; 0 when absent,
    /// which llama.cpp reads as "scale 1").
    pub alpha: f32,
    /// The largest rank over the targets (they may differ: PEFT's
    /// `rank_pattern`, or per-tensor ranks in a GGUF).
    pub rank: usize,
    /// The nominal scale, for display: PEFT `lora_alpha / r` (rsLoRA
    /// `lora_alpha / sqrt(r)`) with the config's `r`; GGUF and adapters
    /// built in memory `alpha / rank` (1 when a GGUF's alpha is 0). Targets
    /// carry the scale to apply.
    pub scale: f32,
    /// PEFT's `base_model_name_or_path`, or a GGUF's
    /// `general.base_model.0.name`.
    pub base_model: Option<String>,
    /// A GGUF's `general.architecture` (llama.cpp refuses an adapter whose
    /// architecture differs from the model's).
    pub architecture: Option<String>,
    /// Sorted by `(layer, module)`, at most one per pair.
    pub targets: Vec<LoraTarget>,
}

impl LoraAdapter {
    /// Opens an adapter, telling the format from the path:
    /// - a directory holding `adapter_config.json`, or that file or
    ///   `adapter_model.safetensors` in one: PEFT (`adapter_model.bin` is
    ///   refused: pickle);
    /// - a file starting with the GGUF magic (`.gguf`): llama.cpp LoRA.
    pub fn open(path: impl AsRef<Path>) -> Result<LoraAdapter, LoraError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(LoraError::new(LoraErrorKind::MissingFile {
                what: "adapter file or directory",
            })
            .in_file(shown));
        }
        if path.is_dir() {
            return peft::open(path);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let in_peft_dir = dir.join(PEFT_CONFIG_FILE).is_file();
        let file_name = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        if file_name == PEFT_PICKLE_FILE
            || (in_peft_dir && path.extension().is_some_and(|e| e == "bin"))
        {
            return Err(LoraError::new(LoraErrorKind::PickleNotSupported).in_file(shown));
        }
        if in_peft_dir && (file_name == PEFT_CONFIG_FILE || file_name == PEFT_WEIGHTS_FILE) {
            return peft::open(dir);
        }
        if gguf::has_magic(path)? {
            return gguf::open(path);
        }
        Err(LoraError::new(LoraErrorKind::NotAnAdapter {
            reason: format!(
                "expected a PEFT directory (with {PEFT_CONFIG_FILE}) or a llama.cpp LoRA .gguf"
            ),
        })
        .in_file(shown))
    }

    /// An adapter built in memory (tests, tools): targets sorted, checked
    /// (see [`LoraTarget::new`]) and unique; `rank` is their largest rank,
    /// `scale` is `alpha / rank`.
    pub fn new(
        name: impl Into<String>,
        format: LoraFormat,
        alpha: f32,
        targets: Vec<LoraTarget>,
    ) -> Result<LoraAdapter, LoraError> {
        if !alpha.is_finite() {
            return Err(LoraErrorKind::NonFiniteAlpha {
                what: "alpha".into(),
                value: f64::from(alpha),
            }
            .into());
        }
        let mut adapter = LoraAdapter {
            name: name.into(),
            format,
            alpha,
            rank: 0,
            scale: 0.0,
            base_model: None,
            architecture: None,
            targets,
        };
        adapter.finish()?;
        adapter.scale = (f64::from(alpha) / adapter.rank as f64) as f32;
        Ok(adapter)
    }

    /// Sorts and checks the targets, and sets `rank`.
    fn finish(&mut self) -> Result<(), LoraError> {
        if self.targets.is_empty() {
            return Err(LoraErrorKind::NoTargets.into());
        }
        self.targets.sort_by_key(|t| (t.layer, t.module));
        for t in &self.targets {
            t.check(self.format)?;
        }
        if let Some(w) = self
            .targets
            .windows(2)
            .find(|w| (w[0].layer, w[0].module) == (w[1].layer, w[1].module))
        {
            return Err(LoraErrorKind::DuplicateTarget {
                tensor: self
                    .format
                    .tensor_name(w[1].layer, w[1].module, LoraHalf::A),
            }
            .into());
        }
        self.rank = self.targets.iter().map(LoraTarget::rank).max().unwrap_or(0);
        Ok(())
    }

    /// The target for `(layer, module)`, if the adapter has one.
    pub fn target(&self, layer: usize, module: LoraModule) -> Option<&LoraTarget> {
        self.targets
            .binary_search_by_key(&(layer, module), |t| (t.layer, t.module))
            .ok()
            .and_then(|i| self.targets.get(i))
    }

    /// Checks the adapter fits `base`: every target's layer exists, its
    /// module exists there, and `a`/`b` match the base weight's `[out, in]`.
    pub fn validate(&self, base: &BaseShapes) -> Result<(), LoraError> {
        self.validate_with(base.n_layer, |layer, module| base.get(layer, module))
    }

    /// [`validate`](Self::validate) against any description of the base:
    /// `base(layer, module)` gives the base weight's `(out, in)`, or `None`
    /// when the model has no such weight.
    pub fn validate_with(
        &self,
        n_layer: usize,
        base: impl Fn(usize, LoraModule) -> Option<(usize, usize)>,
    ) -> Result<(), LoraError> {
        base::validate(self, n_layer, base)
            .map_err(|e| e.in_file(format!("adapter '{}'", self.name)))
    }
}
