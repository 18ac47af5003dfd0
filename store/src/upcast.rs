//! Upcasters: old payload versions stay readable forever. An upcaster turns the
//! payload of `(event_type, version)` into the payload of `version + 1`; reads apply
//! them in turn until no upcaster is registered for the version reached. The stored
//! bytes never change, so the hash chain is untouched.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// Turns one payload version into the next, or says why it cannot.
pub type UpcastFn = fn(&[u8]) -> Result<Vec<u8>, String>;

/// The registered upcasters: per event type, the step from each version they read.
#[derive(Default, Clone)]
pub struct Upcasters {
    steps: HashMap<String, HashMap<u16, UpcastFn>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self
            .steps
            .iter()
            .flat_map(|(event_type, steps)| steps.keys().map(move |version| (event_type, version)))
            .collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register the step from `from_version` to `from_version + 1` of `event_type`.
    pub fn register(mut self, event_type: &str, from_version: u16, step: UpcastFn) -> Self {
        self.steps.entry(event_type.to_owned()).or_default().insert(from_version, step);
        self
    }

    /// Upcast `payload` of `version` as far as the registered steps go. A payload
    /// no step applies to comes back as it went in, borrowed or not: reading the
    /// newest version costs one lookup and no copy.
    pub(crate) fn apply<'a>(
        &self,
        event_type: &str,
        mut version: u16,
        mut payload: Cow<'a, [u8]>,
    ) -> Result<(u16, Cow<'a, [u8]>), String> {
        let Some(steps) = self.steps.get(event_type) else {
            return Ok((version, payload));
        };
        // Bounded: a version only grows, and u16 ends.
        while let Some(step) = steps.get(&version) {
            payload =
                Cow::Owned(step(&payload).map_err(|reason| format!("upcasting {event_type} v{version}: {reason}"))?);
            version = version.checked_add(1).ok_or_else(|| format!("upcasting {event_type}: version overflow"))?;
        }
        Ok((version, payload))
    }
}
