//! The models of one [`Pipeline`](super::Pipeline), loaded on first use and kept while the
//! batch's schedule still needs them, with a count of loads per role for `--report`.
//!
//! What is kept is the scheduler's decision ([`Keep`]): every model for the pipeline's life
//! (a batch picture by picture with all models resident), or only the roles a later step of
//! the schedule still uses (a batch stage by stage, and a single picture), or nothing beyond
//! the running step (`--low-memory`).

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

/// Loads of one model role during a pipeline's life.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelLoads {
    /// How many times the role's weights were read.
    pub loads: usize,
    /// Wall time of those reads (file to device, dtype casts included).
    pub seconds: f64,
}

/// Which loaded models outlive the step that used them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Every model, until the pipeline is dropped.
    All,
    /// These roles; any other is dropped as soon as its user releases it.
    Roles(HashSet<&'static str>),
}

type Entry = Arc<dyn Any + Send + Sync>;

#[derive(Default)]
struct State {
    models: HashMap<&'static str, Entry>,
    loads: BTreeMap<&'static str, ModelLoads>,
    keep: Option<Keep>,
}

/// Loaded models by role.
#[derive(Default)]
pub(crate) struct ModelCache {
    state: Mutex<State>,
}

impl ModelCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves only a map of loaded models behind; it stays
        // usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model of `role`, loaded by `load` when it is not held. `T` must be the same type
    /// for every use of a role.
    pub fn get_or_load<T: Any + Send + Sync>(
        &self,
        role: &'static str,
        load: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        if let Some(entry) = self.lock().models.get(role) {
            if let Ok(model) = entry.clone().downcast::<T>() {
                return Ok(model);
            }
        }
        let start = Instant::now();
        let model = Arc::new(load()?);
        let seconds = start.elapsed().as_secs_f64();
        let mut state = self.lock();
        let counter = state.loads.entry(role).or_default();
        counter.loads += 1;
        counter.seconds += seconds;
        state.models.insert(role, model.clone());
        Ok(model)
    }

    /// The user of `role` is done with it for now: drop it unless the schedule keeps it.
    pub fn release(&self, role: &'static str) {
        let mut state = self.lock();
        let kept = match &state.keep {
            Some(Keep::All) => true,
            Some(Keep::Roles(roles)) => roles.contains(role),
            None => false,
        };
        if !kept {
            state.models.remove(role);
        }
    }

    /// Sets what outlives its user's [`ModelCache::release`]; held models stay until then or
    /// until [`ModelCache::trim`].
    pub fn set_keep(&self, keep: Keep) {
        self.lock().keep = Some(keep);
    }

    /// Drops every held model that [`ModelCache::set_keep`] does not cover.
    pub fn trim(&self) {
        let mut state = self.lock();
        let State { models, keep, .. } = &mut *state;
        match keep {
            Some(Keep::All) => {}
            Some(Keep::Roles(roles)) => models.retain(|role, _| roles.contains(role)),
            None => models.clear(),
        }
    }

    /// Loads so far, by role.
    pub fn loads(&self) -> BTreeMap<String, ModelLoads> {
        self.lock()
            .loads
            .iter()
            .map(|(role, l)| (role.to_string(), l.clone()))
            .collect()
    }

    /// Seconds spent loading so far, over every role.
    pub fn load_seconds(&self) -> f64 {
        self.lock().loads.values().map(|l| l.seconds).sum()
    }

    /// Whether the model of `role` is held now.
    pub fn holds(&self, role: &str) -> bool {
        self.lock().models.contains_key(role)
    }

    /// Roles held now (sorted).
    #[cfg(test)]
    pub fn held(&self) -> Vec<&'static str> {
        let mut roles: Vec<_> = self.lock().models.keys().copied().collect();
        roles.sort_unstable();
        roles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_once_while_kept_and_again_after_release() {
        let cache = ModelCache::default();
        cache.set_keep(Keep::Roles(HashSet::from(["a"])));
        let a1 = cache.get_or_load("a", || Ok(1u32)).unwrap();
        let a2 = cache
            .get_or_load("a", || -> Result<u32> { panic!("loaded twice") })
            .unwrap();
        assert!(Arc::ptr_eq(&a1, &a2));
        cache.get_or_load("b", || Ok(2u32)).unwrap();
        cache.release("a");
        cache.release("b");
        assert_eq!(cache.held(), vec!["a"]);
        assert!(cache.holds("a") && !cache.holds("b"));
        cache.get_or_load("b", || Ok(2u32)).unwrap();
        assert_eq!(cache.loads()["b"].loads, 2);
        assert_eq!(cache.loads()["a"].loads, 1);
        cache.set_keep(Keep::Roles(HashSet::new()));
        assert_eq!(cache.held(), vec!["a", "b"], "set_keep alone drops nothing");
        cache.trim();
        assert!(cache.held().is_empty());
        cache.set_keep(Keep::All);
        cache.get_or_load("c", || Ok(3u32)).unwrap();
        cache.release("c");
        assert_eq!(cache.held(), vec!["c"]);
    }

    #[test]
    fn failed_load_is_not_counted_or_held() {
        let cache = ModelCache::default();
        let err = cache.get_or_load::<u32>("a", || anyhow::bail!("bad checkpoint"));
        assert!(err.is_err());
        assert!(cache.held().is_empty());
        assert!(cache.loads().is_empty());
    }
}
