//! LoRA adapters on a loaded model: the [`AdapterRegistry`] of adapters
//! loaded by name (their weights stacked on the device once per load), and
//! [`AdapterSet`], which of them a sequence uses and how strongly.
//!
//! Loading or unloading an adapter restacks the loaded adapters on the
//! device and drops the compiled plans that read the stacks (milliseconds
//! for small adapters; the next forward recompiles). Applying, removing or
//! swapping loaded adapters changes only the per-row scales the next
//! forward is fed: no upload, no compile. A forward in which no row uses
//! an adapter runs the plain plan, bit for bit the base model's.

use std::path::Path;
use std::sync::Arc;

use kiln_engine::Device;
use kiln_loaders::lora::{LoraAdapter, LoraError, LoraFormat, LoraModule};
use kiln_models::{LlamaConfig, LoraStack};

use crate::model::Error;

/// Which loaded adapters a sequence uses, each with a multiplier on its
/// own scale (`alpha / r`): `1.0` applies it as trained, `0.5` half-way.
/// Several adapters at once add their updates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdapterSet {
    entries: Vec<(String, f32)>,
}

impl AdapterSet {
    /// The empty set: the base model.
    pub fn new() -> AdapterSet {
        AdapterSet::default()
    }

    /// One adapter at `scale`.
    pub fn one(name: impl Into<String>, scale: f32) -> AdapterSet {
        AdapterSet::new().with(name, scale)
    }

    /// This set with `name` at `scale` (replacing its earlier scale).
    pub fn with(mut self, name: impl Into<String>, scale: f32) -> AdapterSet {
        self.insert(name, scale);
        self
    }

    /// Adds `name` at `scale`, or changes its scale.
    pub fn insert(&mut self, name: impl Into<String>, scale: f32) {
        let name = name.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = scale,
            None => self.entries.push((name, scale)),
        }
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| n != name);
        self.entries.len() != before
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _)| n == name)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `(name, scale)` in the order added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f32)> {
        self.entries.iter().map(|(n, s)| (n.as_str(), *s))
    }
}

impl<S: Into<String>> FromIterator<(S, f32)> for AdapterSet {
    fn from_iter<I: IntoIterator<Item = (S, f32)>>(iter: I) -> AdapterSet {
        let mut set = AdapterSet::new();
        for (name, scale) in iter {
            set.insert(name, scale);
        }
        set
    }
}

/// What the registry knows of a loaded adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterInfo {
    pub name: String,
    pub format: LoraFormat,
    /// Its largest rank.
    pub rank: usize,
    pub alpha: f32,
    /// Its nominal scale (`alpha / r`); targets may differ (rank and alpha
    /// patterns).
    pub scale: f32,
    /// Products it adapts: `(layer, module)` pairs.
    pub targets: usize,
    /// The modules it adapts in any layer.
    pub modules: Vec<LoraModule>,
}

impl AdapterInfo {
    fn of(adapter: &LoraAdapter) -> AdapterInfo {
        let mut modules: Vec<LoraModule> = adapter.targets.iter().map(|t| t.module).collect();
        modules.sort();
        modules.dedup();
        AdapterInfo {
            name: adapter.name.clone(),
            format: adapter.format,
            rank: adapter.rank,
            alpha: adapter.alpha,
            scale: adapter.scale,
            targets: adapter.targets.len(),
            modules,
        }
    }
}

/// The adapters loaded on one model, their stacks on its device, and the
/// set each cache slot uses. Owned by [`crate::Model`]; reached through its
/// adapter methods.
#[derive(Default)]
pub struct AdapterRegistry {
    /// Loaded adapters in load order (their ranks sit in that order in the
    /// stacks). Host copies are kept to restack on load and unload.
    loaded: Vec<Arc<LoraAdapter>>,
    stack: Option<LoraStack>,
    /// Per cache slot: (index into `loaded`, multiplier).
    slots: Vec<Vec<(usize, f32)>>,
}

impl AdapterRegistry {
    pub(crate) fn new(slots: usize) -> AdapterRegistry {
        AdapterRegistry {
            slots: vec![Vec::new(); slots],
            ..AdapterRegistry::default()
        }
    }

    /// Every loaded adapter, in load order.
    pub fn list(&self) -> Vec<AdapterInfo> {
        self.loaded.iter().map(|a| AdapterInfo::of(a)).collect()
    }

    pub fn get(&self, name: &str) -> Option<&LoraAdapter> {
        self.index(name).map(|i| &*self.loaded[i])
    }

    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }

    /// The stacks the LoRA plans read, when any adapter is loaded.
    pub(crate) fn stack(&self) -> Option<&LoraStack> {
        self.stack.as_ref()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.loaded.iter().position(|a| a.name == name)
    }

    /// Opens the adapter at `path` under `name` (its file or directory name
    /// when `None`) and loads it.
    pub(crate) fn open(path: &Path, name: Option<&str>) -> Result<LoraAdapter, Error> {
        let mut adapter = LoraAdapter::open(path).map_err(lora)?;
        if let Some(name) = name {
            adapter.name = name.to_string();
        }
        Ok(adapter)
    }

    /// Adds `adapter` (checked against `config`) and restacks.
    pub(crate) fn load(
        &mut self,
        adapter: LoraAdapter,
        config: &LlamaConfig,
        device: &Device,
    ) -> Result<AdapterInfo, Error> {
        check_name(&adapter.name)?;
        if self.index(&adapter.name).is_some() {
            return Err(Error::AdapterExists {
                name: adapter.name.clone(),
            });
        }
        kiln_models::llama::lora::validate(config, &adapter).map_err(lora)?;
        let info = AdapterInfo::of(&adapter);
        let mut loaded = self.loaded.clone();
        loaded.push(Arc::new(adapter));
        self.stack = Some(restack(&loaded, config, device)?);
        self.loaded = loaded;
        Ok(info)
    }

    /// Removes `name` and restacks; refused while a slot uses it.
    pub(crate) fn unload(
        &mut self,
        name: &str,
        config: &LlamaConfig,
        device: &Device,
    ) -> Result<(), Error> {
        let i = self.index(name).ok_or_else(|| unknown(name))?;
        if let Some(slot) = self.slots.iter().position(|s| s.iter().any(|u| u.0 == i)) {
            return Err(Error::AdapterInUse {
                name: name.to_string(),
                slot,
            });
        }
        let mut loaded = self.loaded.clone();
        loaded.remove(i);
        self.stack = match loaded.is_empty() {
            true => None,
            false => Some(restack(&loaded, config, device)?),
        };
        self.loaded = loaded;
        for uses in &mut self.slots {
            for u in uses.iter_mut().filter(|u| u.0 > i) {
                u.0 -= 1;
            }
        }
        Ok(())
    }

    /// Makes `set` the adapters `slot` uses; every name must be loaded and
    /// every scale finite.
    pub(crate) fn set(&mut self, slot: usize, set: &AdapterSet) -> Result<(), Error> {
        let uses = set
            .iter()
            .map(|(name, scale)| {
                if !scale.is_finite() {
                    return Err(Error::BadAdapterScale {
                        name: name.to_string(),
                        scale,
                    });
                }
                Ok((self.index(name).ok_or_else(|| unknown(name))?, scale))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let slot = self.slots.get_mut(slot).ok_or(Error::BadBatch(format!(
            "slot {slot} does not exist for adapters"
        )))?;
        *slot = uses;
        Ok(())
    }

    /// The set `slot` uses.
    pub(crate) fn active(&self, slot: usize) -> AdapterSet {
        self.slots
            .get(slot)
            .into_iter()
            .flatten()
            .map(|&(i, s)| (self.loaded[i].name.clone(), s))
            .collect()
    }

    /// The scales row (`[R]`) of `slot`, or `None` when it uses no adapter
    /// (or none is loaded).
    pub(crate) fn scales(&self, slot: usize) -> Option<Vec<f32>> {
        let stack = self.stack.as_ref()?;
        let uses = self.slots.get(slot)?;
        (!uses.is_empty()).then(|| stack.layout.scales(uses))
    }

    /// The rank R of the stacks (0 without adapters).
    pub(crate) fn rank(&self) -> usize {
        self.stack.as_ref().map_or(0, |s| s.layout.rank)
    }
}

fn restack(
    loaded: &[Arc<LoraAdapter>],
    config: &LlamaConfig,
    device: &Device,
) -> Result<LoraStack, Error> {
    let refs: Vec<&LoraAdapter> = loaded.iter().map(|a| &**a).collect();
    Ok(LoraStack::build(config, &refs, device)?)
}

fn lora(e: LoraError) -> Error {
    Error::Lora(Box::new(e))
}

fn unknown(name: &str) -> Error {
    Error::UnknownAdapter {
        name: name.to_string(),
    }
}

/// Adapter names are what requests and `base+adapter` model names carry:
/// printable, no separators a request could confuse.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadAdapterName {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_replace_and_remove_by_name() {
        let mut set = AdapterSet::one("a", 1.0).with("b", 0.5).with("a", 2.0);
        assert_eq!(set.iter().collect::<Vec<_>>(), [("a", 2.0), ("b", 0.5)]);
        assert!(set.remove("a"));
        assert!(!set.remove("a"));
        assert_eq!(set.len(), 1);
        assert!(set.contains("b"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("math-v2_r8.gguf").is_ok());
        for bad in ["", "a/b", "..\\x", "a+b", "with space"] {
            assert!(
                matches!(check_name(bad), Err(Error::BadAdapterName { .. })),
                "{bad:?}"
            );
        }
    }
}
