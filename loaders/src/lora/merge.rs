//! Merging LoRA adapters into a base GGUF (`kiln lora merge`): every
//! adapted weight becomes
//!
//! ```text
//! W' = W + Σ_j m_j · s_j · B_j A_j     m_j: the user's multiplier (--lora PATH:SCALE)
//!                                      s_j: the target's own scale (alpha / rank, …)
//! ```
//!
//! computed on the CPU from the dequantized base, and every other tensor is
//! copied byte for byte. This is what llama.cpp's `llama-export-lora` does;
//! where kiln differs it says so below.
//!
//! - **Output type** ([`MergeOutType`]): by default merged tensors are F16,
//!   except those the base stores as F32, which stay F32 — llama.cpp's
//!   export-lora rule (its only output). `f32` keeps full precision, `same`
//!   requantizes to the base tensor's type with kiln's reference quantizers
//!   (ggml's `quantize_row_*_ref`).
//! - **Metadata**: all of the base's keys are kept (export-lora copies them
//!   too). export-lora records nothing about the merge; kiln adds
//!   `general.lora.merged.count` and per adapter `general.lora.merged.{i}.*`
//!   (name, format, rank, alpha, multiplier, base model when known),
//!   appending to any a previous merge left. `general.file_type` is set to
//!   llama.cpp's MOSTLY_F16 (1) or ALL_F32 (0) when merged tensors change
//!   type to F16 or F32, as export-lora sets MOSTLY_F16; with `same` it is
//!   kept. Tensors keep the base's order (export-lora sorts them by name).
//! - **Checks**, before anything is written: each adapter fits the base's
//!   shapes ([`LoraAdapter::validate`]); an adapter that names an
//!   architecture (a llama.cpp LoRA GGUF) must name the base's, as
//!   export-lora requires; split GGUFs and adapters given as the base are
//!   refused, as there. Unlike export-lora, adapters may adapt different
//!   sets of weights (each weight sums the adapters that have it), and
//!   Q8_0 adapters merge (the loader dequantizes them).
//! - **Memory**: the output is streamed tensor by tensor through
//!   [`GgufWriter::stream`]; the base is memory-mapped. Peak memory is the
//!   adapters (small: a rank-16 pair for a 4096-wide layer is 0.5 MiB) plus
//!   one merged tensor in f32 and its encoded bytes.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kiln_kernels::{quant, DType};
use rayon::prelude::*;

use crate::error::{ErrorKind, LoadError};
use crate::gguf::{GgufFile, GgufWriter};
use crate::lora::error::{LoraError, LoraErrorKind};
use crate::lora::{BaseShapes, LoraAdapter, LoraFormat, LoraHalf, LoraTarget, QkOrder};
use crate::metadata::{Metadata, Value};
use crate::weights::Weight;

/// The metadata key counting the adapters merged into a model.
pub const MERGED_COUNT_KEY: &str = "general.lora.merged.count";
const FILE_TYPE_KEY: &str = "general.file_type";
/// llama.cpp's `LLAMA_FTYPE_ALL_F32` and `LLAMA_FTYPE_MOSTLY_F16`.
const FTYPE_ALL_F32: u32 = 0;
const FTYPE_MOSTLY_F16: u32 = 1;

/// What merged tensors are stored as. Tensors no adapter touches keep
/// their bytes whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergeOutType {
    /// F16, except where the base tensor is F32, which stays F32: what
    /// llama.cpp's `llama-export-lora` writes, and the default.
    #[default]
    F16,
    /// F32: the merged values exactly as computed.
    F32,
    /// The base tensor's own type, requantized with kiln's reference
    /// quantizers; an error ([`LoraErrorKind::NoQuantizer`]) for a type
    /// kiln can only decode (IQ4_NL, IQ4_XS, …).
    Same,
}

impl MergeOutType {
    /// The type a merged tensor stored as `base` is written in.
    pub fn dtype_for(self, base: DType) -> DType {
        match self {
            MergeOutType::F16 if base == DType::F32 => DType::F32,
            MergeOutType::F16 => DType::F16,
            MergeOutType::F32 => DType::F32,
            MergeOutType::Same => base,
        }
    }
}

impl FromStr for MergeOutType {
    type Err = LoraError;

    /// `f16`, `f32` or `same` (any case).
    fn from_str(s: &str) -> Result<MergeOutType, LoraError> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(MergeOutType::F16),
            "f32" => Ok(MergeOutType::F32),
            "same" => Ok(MergeOutType::Same),
            _ => Err(LoraErrorKind::UnknownOutType { given: s.into() }.into()),
        }
    }
}

impl fmt::Display for MergeOutType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MergeOutType::F16 => "f16",
            MergeOutType::F32 => "f32",
            MergeOutType::Same => "same",
        })
    }
}

/// One adapter to merge and the user's multiplier on top of its own scale
/// (llama.cpp's `--lora-scaled FILE S`; 1.0 for plain `--lora`).
#[derive(Clone, Debug)]
pub struct MergeSource {
    pub adapter: LoraAdapter,
    pub multiplier: f32,
}

impl MergeSource {
    pub fn new(adapter: LoraAdapter, multiplier: f32) -> MergeSource {
        MergeSource {
            adapter,
            multiplier,
        }
    }
}

/// How [`merge_gguf`] writes its output.
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeOptions {
    pub outtype: MergeOutType,
    /// Replace an existing output file (the CLI's `--force`); otherwise an
    /// existing one is an [`LoraErrorKind::OutputExists`] error.
    pub overwrite: bool,
}

/// One tensor the merge changed.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedTensor {
    pub name: String,
    /// The base's type and the type written.
    pub from: DType,
    pub to: DType,
    /// How many of the adapters adapt it.
    pub adapters: usize,
}

/// What a merge wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeReport {
    /// The merged tensors, in file order.
    pub merged: Vec<MergedTensor>,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Merges `sources` into the GGUF at `base` and writes the result to `out`
/// (see the module docs for the rules).
///
/// The file is written as `<out>.<pid>.part` beside `out` and renamed into
/// place only when complete, so `out` is never left half-written; the part
/// file is removed on failure. An existing `out` is refused unless
/// `options.overwrite`.
pub fn merge_gguf(
    base: impl AsRef<Path>,
    sources: &[MergeSource],
    out: impl AsRef<Path>,
    options: &MergeOptions,
) -> Result<MergeReport, LoraError> {
    let out = out.as_ref();
    let shown = out.display().to_string();
    let exists = || LoraError::new(LoraErrorKind::OutputExists).in_file(shown.clone());
    if !options.overwrite && out.exists() {
        return Err(exists());
    }
    let base = GgufFile::open(base)?;
    let sources = in_base_order(&base, sources).map_err(|e| e.in_file(base.name().to_string()))?;
    // Validate everything before creating a file.
    let plan = plan(&base, &sources, options.outtype)?;
    let mut part = PartFile::create(part_path(out))?;
    let report = write_plan(
        &base,
        &plan,
        std::io::BufWriter::with_capacity(1 << 20, &mut part.file),
    )
    .map_err(|e| e.in_file(shown.clone()))?;
    // The window between this check and the rename is the only way an
    // output created meanwhile gets replaced.
    if !options.overwrite && out.exists() {
        return Err(exists());
    }
    part.commit(out)?;
    Ok(report)
}

/// [`merge_gguf`] into any writer: the same checks (all before the first
/// byte is written), then the file streamed tensor by tensor.
pub fn merge_gguf_to(
    base: &GgufFile,
    sources: &[MergeSource],
    outtype: MergeOutType,
    w: impl Write,
) -> Result<MergeReport, LoraError> {
    let sources = in_base_order(base, sources)?;
    let plan = plan(base, &sources, outtype)?;
    write_plan(base, &plan, w)
}

/// The sources with their q/k `B` rows in the base's order (`QkOrder`): a
/// LLaMA GGUF holds them permuted, so a PEFT adapter's are permuted too.
fn in_base_order(base: &GgufFile, sources: &[MergeSource]) -> Result<Vec<MergeSource>, LoraError> {
    let md = base.metadata();
    let arch = md.architecture().unwrap_or_default();
    let head = |key: &str| {
        md.get_u64(&format!("{arch}.attention.{key}"))
            .and_then(|n| usize::try_from(n).ok())
    };
    let n_head = head("head_count").unwrap_or(0);
    let order = QkOrder {
        permuted: arch == "llama",
        n_head,
        n_head_kv: head("head_count_kv").unwrap_or(n_head),
    };
    // Shapes first, so a misfit is reported as one rather than as rows
    // that cannot be reordered; no reordering for bases `plan` refuses.
    let refused = md.get_str("general.type") == Some("adapter")
        || md.get_u64("split.count").is_some_and(|n| n > 1);
    let shapes = BaseShapes::from_weights(&base.weights());
    sources
        .iter()
        .map(|s| {
            // An adapter for another architecture is refused by `plan`.
            let foreign = s.adapter.architecture.as_deref().is_some_and(|a| a != arch);
            if !refused {
                s.adapter.validate(&shapes)?;
            }
            let adapter = match foreign || refused {
                true => s.adapter.clone(),
                false => s.adapter.clone().in_qk_order(arch, order)?,
            };
            Ok(MergeSource {
                adapter,
                multiplier: s.multiplier,
            })
        })
        .collect()
}

/// `base + Σ multiplier · target.scale · B A` for one weight stored as
/// `base` (`[out, in]`, any type kiln can dequantize), encoded as `out`.
///
/// Sums run in f64 from the f32 base, each rounded once to f32 at the end:
/// products of f32 values are exact in f64, so the stored f32 is the exact
/// result correctly rounded (double rounding aside), whatever the order of
/// adapters or ranks. In f32, `r` terms per adapter would each add a
/// rounding, up to `r · 2⁻²⁴` of the largest term: more than the result's
/// own rounding when `W` is small next to the update. f64 halves the SIMD
/// width; the merge is `r · out · in` multiply-adds per adapter and weight
/// (15.5 G for llama-1b at rank 16 on all seven projections: 25 s for the
/// whole `--outtype same` merge, release build, on 2 shared cores; about a
/// third of the CPU time is the Q4_0 reference quantizer).
pub fn merge_weight(
    name: &str,
    base: &Weight,
    updates: &[(&LoraTarget, f32)],
    out: DType,
) -> Result<Vec<u8>, LoraError> {
    let dtype = base.dtype();
    let &[n_out, n_in] = base.shape() else {
        return Err(LoraErrorKind::BadShape {
            tensor: name.into(),
            shape: base.shape().to_vec(),
            expected: "[out, in] base weight",
        }
        .into());
    };
    if !quant::can_dequantize(dtype) {
        return Err(LoraErrorKind::NoDequantizer {
            tensor: name.into(),
            dtype: dtype.to_string(),
        }
        .into());
    }
    if !quant::can_quantize(out) {
        return Err(LoraErrorKind::NoQuantizer {
            tensor: name.into(),
            dtype: out.to_string(),
        }
        .into());
    }
    let codec = |e: quant::QuantError| {
        LoraError::new(LoraErrorKind::Decode {
            tensor: name.into(),
            message: e.to_string(),
        })
    };
    // Each update as (coefficient m·s, A [r, in], B [out, r], r).
    let mut terms = Vec::with_capacity(updates.len());
    for &(t, multiplier) in updates {
        t.check(LoraFormat::Gguf)?;
        if t.in_features() != n_in || t.out_features() != n_out {
            return Err(LoraErrorKind::BaseShapeMismatch {
                a: LoraFormat::Gguf.tensor_name(t.layer, t.module, LoraHalf::A),
                a_shape: t.a.shape().to_vec(),
                b: LoraFormat::Gguf.tensor_name(t.layer, t.module, LoraHalf::B),
                b_shape: t.b.shape().to_vec(),
                base: name.into(),
                base_shape: (n_out, n_in),
            }
            .into());
        }
        // check() proved both are F32.
        let a = t.a.as_f32().unwrap_or_default();
        let b = t.b.as_f32().unwrap_or_default();
        let coef = f64::from(multiplier) * f64::from(t.scale);
        terms.push((coef, a, b, t.rank()));
    }

    let numel = n_out.checked_mul(n_in).ok_or_else(|| {
        LoadError::new(ErrorKind::ShapeOverflow {
            shape: vec![n_out as u64, n_in as u64],
        })
        .tensor(name)
    })?;
    let mut w = vec![0f32; numel]; // [out, in]
    if w.is_empty() {
        return quant::quantize(out, &w).map_err(codec);
    }
    quant::dequantize_rows(dtype, base.bytes(), &mut w, n_in).map_err(codec)?;
    w.par_chunks_mut(n_in).enumerate().for_each_init(
        || vec![0f64; n_in],
        |acc, (o, row)| {
            for (x, &v) in acc.iter_mut().zip(row.iter()) {
                *x = f64::from(v);
            }
            for &(coef, a, b, r) in &terms {
                for (k, a_row) in a.chunks_exact(n_in).enumerate().take(r) {
                    let c = coef * f64::from(b[o * r + k]);
                    for (x, &v) in acc.iter_mut().zip(a_row) {
                        *x += c * f64::from(v);
                    }
                }
            }
            for (v, &x) in row.iter_mut().zip(acc.iter()) {
                *v = x as f32;
            }
        },
    );
    quant::quantize_rows(out, &w, n_in).map_err(codec)
}

/// One output tensor: copied, or merged from the listed updates.
struct Step<'a> {
    name: &'a str,
    /// `(target, multiplier)` per adapter that adapts it; empty: copy.
    updates: Vec<(&'a LoraTarget, f32)>,
    out: DType,
}

struct Plan<'a> {
    metadata: Metadata,
    steps: Vec<Step<'a>>,
}

/// Every check, then what to write: the metadata and one step per tensor.
fn plan<'a>(
    base: &'a GgufFile,
    sources: &'a [MergeSource],
    outtype: MergeOutType,
) -> Result<Plan<'a>, LoraError> {
    if sources.is_empty() {
        return Err(LoraErrorKind::NoAdapters.into());
    }
    let file = || base.name().to_string();
    let md = base.metadata();
    if md.get_str("general.type") == Some("adapter") {
        return Err(LoraError::new(LoraErrorKind::Unsupported {
            what: "merging into a LoRA adapter (the base has general.type = adapter)".into(),
        })
        .in_file(file()));
    }
    if let Some(n) = md.get_u64("split.count").filter(|&n| n > 1) {
        return Err(LoraError::new(LoraErrorKind::Unsupported {
            what: format!(
                "merging into one shard of a split GGUF (split.count = {n}; join the shards \
                 with llama-gguf-split --merge first)"
            ),
        })
        .in_file(file()));
    }
    let weights = base.weights();
    let shapes = BaseShapes::from_weights(&weights);
    for s in sources {
        let adapter = &s.adapter;
        let in_adapter = |e: LoraError| e.in_file(format!("adapter '{}'", adapter.name));
        if !s.multiplier.is_finite() {
            return Err(in_adapter(
                LoraErrorKind::BadMultiplier {
                    value: f64::from(s.multiplier),
                }
                .into(),
            ));
        }
        if let Some(arch) = &adapter.architecture {
            if md.architecture() != Some(arch.as_str()) {
                return Err(in_adapter(
                    LoraErrorKind::ArchitectureMismatch {
                        adapter: arch.clone(),
                        base: md.architecture().map(str::to_string),
                    }
                    .into(),
                ));
            }
        }
        adapter.validate(&shapes)?;
    }

    let mut steps: Vec<Step<'a>> = base
        .tensors()
        .iter()
        .map(|t| Step {
            name: &t.name,
            updates: Vec::new(),
            out: t.dtype,
        })
        .collect();
    for s in sources {
        for t in &s.adapter.targets {
            // GGUF names, or the Hugging Face ones BaseShapes also accepts.
            let names = [
                t.module.gguf_weight(t.layer),
                format!("{}.weight", t.module.hf_key(t.layer)),
            ];
            let Some(step) = steps
                .iter_mut()
                .find(|st| names.iter().any(|n| n == st.name))
            else {
                return Err(LoraError::new(LoraErrorKind::ModuleNotInBase {
                    tensor: s.adapter.format.tensor_name(t.layer, t.module, LoraHalf::A),
                    base: t.module.gguf_weight(t.layer),
                })
                .in_file(format!("adapter '{}'", s.adapter.name)));
            };
            step.updates.push((t, s.multiplier));
        }
    }
    for (step, info) in steps.iter_mut().zip(base.tensors()) {
        if step.updates.is_empty() {
            continue;
        }
        step.out = outtype.dtype_for(info.dtype);
        let fail = |kind: LoraErrorKind| LoraError::new(kind).in_file(file());
        if !quant::can_dequantize(info.dtype) {
            return Err(fail(LoraErrorKind::NoDequantizer {
                tensor: info.name.clone(),
                dtype: info.dtype.to_string(),
            }));
        }
        if !quant::can_quantize(step.out) {
            return Err(fail(LoraErrorKind::NoQuantizer {
                tensor: info.name.clone(),
                dtype: step.out.to_string(),
            }));
        }
    }
    let metadata = merged_metadata(base, sources, &steps)?;
    Ok(Plan { metadata, steps })
}

/// The base's metadata plus the merge's record (see the module docs).
fn merged_metadata(
    base: &GgufFile,
    sources: &[MergeSource],
    steps: &[Step<'_>],
) -> Result<Metadata, LoraError> {
    let mut md = base.metadata().clone();
    let first = match md.get(MERGED_COUNT_KEY) {
        None => 0,
        Some(v) => v.as_u64().ok_or_else(|| {
            LoadError::new(ErrorKind::BadMetadata {
                key: MERGED_COUNT_KEY.into(),
                expected: "an unsigned integer",
            })
            .in_file(base.name())
        })?,
    };
    let count = first + sources.len() as u64;
    md.insert(
        MERGED_COUNT_KEY,
        Value::U32(u32::try_from(count).unwrap_or(u32::MAX)),
    );
    for (i, s) in (first..).zip(sources) {
        let a = &s.adapter;
        let key = |field: &str| format!("general.lora.merged.{i}.{field}");
        let format = match a.format {
            LoraFormat::Peft => "peft",
            LoraFormat::Gguf => "gguf",
        };
        md.insert(key("name"), Value::String(a.name.clone()));
        md.insert(key("format"), Value::String(format.into()));
        md.insert(
            key("rank"),
            Value::U32(u32::try_from(a.rank).unwrap_or(u32::MAX)),
        );
        md.insert(key("alpha"), Value::F32(a.alpha));
        md.insert(key("multiplier"), Value::F32(s.multiplier));
        if let Some(b) = &a.base_model {
            md.insert(key("base_model"), Value::String(b.clone()));
        }
    }
    let changed_to = |d: DType| {
        steps
            .iter()
            .zip(base.tensors())
            .any(|(s, t)| !s.updates.is_empty() && s.out == d && t.dtype != d)
    };
    if changed_to(DType::F16) {
        md.insert(FILE_TYPE_KEY, Value::U32(FTYPE_MOSTLY_F16));
    } else if changed_to(DType::F32) {
        md.insert(FILE_TYPE_KEY, Value::U32(FTYPE_ALL_F32));
    }
    Ok(md)
}

/// Declares every tensor, writes the header, then each tensor in turn.
fn write_plan(base: &GgufFile, plan: &Plan<'_>, w: impl Write) -> Result<MergeReport, LoraError> {
    let mut writer = GgufWriter::new();
    writer.version(base.version())?;
    writer.add_metadata(&plan.metadata)?;
    for (step, info) in plan.steps.iter().zip(base.tensors()) {
        writer.declare_tensor(step.name, step.out, &info.shape)?;
    }
    let mut counted = CountingWriter { inner: w, bytes: 0 };
    let mut stream = writer.stream(&mut counted)?;
    let weights = base.weights();
    let mut report = MergeReport::default();
    for (step, info) in plan.steps.iter().zip(base.tensors()) {
        if step.updates.is_empty() {
            stream.write_tensor(step.name, base.tensor_data(step.name)?)?;
            report.copied += 1;
            continue;
        }
        let weight = weights
            .get(step.name)
            .ok_or_else(|| LoadError::new(ErrorKind::TensorNotFound(step.name.into())))?;
        let bytes = merge_weight(step.name, weight, &step.updates, step.out)?;
        stream.write_tensor(step.name, &bytes)?;
        report.merged.push(MergedTensor {
            name: step.name.into(),
            from: info.dtype,
            to: step.out,
            adapters: step.updates.len(),
        });
    }
    stream.finish()?;
    report.bytes = counted.bytes;
    Ok(report)
}

/// Counts the bytes written through it.
struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `<out>.<pid>.part` in `out`'s directory: the pid keeps two merges to
/// the same output from writing one file.
fn part_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.part", std::process::id()));
    out.with_file_name(name)
}

/// The output being written; removed on drop unless committed.
struct PartFile {
    path: PathBuf,
    file: std::fs::File,
    committed: bool,
}

impl PartFile {
    fn create(path: PathBuf) -> Result<PartFile, LoraError> {
        let file = std::fs::File::create(&path).map_err(|e| LoadError::io(&path, e))?;
        Ok(PartFile {
            path,
            file,
            committed: false,
        })
    }

    /// Syncs and renames into place (atomic on one filesystem).
    fn commit(mut self, dest: &Path) -> Result<(), LoraError> {
        self.file
            .sync_all()
            .map_err(|e| LoadError::io(&self.path, e))?;
        std::fs::rename(&self.path, dest).map_err(|e| LoadError::io(dest, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error being returned matters more.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
