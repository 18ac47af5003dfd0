//! The bounded cache of folded stream states: each entry is a stream's state as
//! of a version, so a load folds only the events after it.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use domain::{Cart, Customer, EmailClaim, Event, Order, Product};
use lru::LruCache;

/// A state the command side folds and caches: one per stream category.
pub(crate) trait Aggregate: Clone + Default + Send + Sync + 'static {
    /// The state after `event`, or `Err(self)` when the event belongs to another
    /// aggregate (which a sound log never holds on this stream).
    fn evolve_with(self, event: &Event) -> Result<Self, Self>;
    fn into_cached(state: Arc<Self>) -> Cached;
    fn from_cached(cached: &Cached) -> Option<Arc<Self>>;
}

/// Generates [`Cached`] and the [`Aggregate`] impls from one table.
macro_rules! aggregates {
    ($($state:ident: Event::$event:ident => $evolve:path,)+) => {
        /// A cached state of any aggregate.
        #[derive(Debug, Clone)]
        pub(crate) enum Cached {
            $($state(Arc<$state>),)+
        }

        impl Cached {
            /// The state of `event`'s aggregate before its stream's first event.
            fn initial_for(event: &Event) -> Cached {
                match event {
                    $(Event::$event(_) => Cached::$state(Arc::default()),)+
                }
            }

            /// The state after `event`, or `None` when the event belongs elsewhere.
            /// The state is copied only if someone else holds it still.
            fn evolve_with(self, event: &Event) -> Option<Cached> {
                match self {
                    $(Cached::$state(state) => {
                        <$state as Aggregate>::evolve_with(Arc::unwrap_or_clone(state), event)
                            .ok()
                            .map(|state| Cached::$state(Arc::new(state)))
                    })+
                }
            }
        }

        $(
            impl Aggregate for $state {
                fn evolve_with(self, event: &Event) -> Result<Self, Self> {
                    match event {
                        Event::$event(event) => Ok($evolve(self, event)),
                        _ => Err(self),
                    }
                }

                fn into_cached(state: Arc<Self>) -> Cached {
                    Cached::$state(state)
                }

                fn from_cached(cached: &Cached) -> Option<Arc<Self>> {
                    match cached {
                        Cached::$state(state) => Some(Arc::clone(state)),
                        _ => None,
                    }
                }
            }
        )+
    };
}

aggregates! {
    Product: Event::Product => domain::product::evolve,
    Customer: Event::Customer => domain::customer::evolve,
    EmailClaim: Event::EmailClaim => domain::email_claim::evolve,
    Cart: Event::Cart => domain::cart::evolve,
    Order: Event::Order => domain::order::evolve,
}

/// What the cache did since the service was built: a metric-ish view for
/// dashboards and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Loads answered from the cache with no read of events.
    pub hits: u64,
    /// Loads that found an older state cached and folded only the newer events.
    pub partial_hits: u64,
    /// Loads that folded a stream from its first event.
    pub misses: u64,
    /// Events read from the log and folded by loads.
    pub events_folded: u64,
    /// Streams held now.
    pub streams: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub partial_hits: AtomicU64,
    pub misses: AtomicU64,
    pub events_folded: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }
}

/// Least-recently-used states by stream name, each with the version it is folded to.
#[derive(Debug)]
pub(crate) struct StateCache {
    entries: Mutex<LruCache<String, (u64, Cached)>>,
    pub(crate) counters: Counters,
}

impl StateCache {
    pub(crate) fn new(streams_max: NonZeroUsize) -> Self {
        StateCache { entries: Mutex::new(LruCache::new(streams_max)), counters: Counters::default() }
    }

    // A panic while the lock was held cannot leave an entry half-written (each
    // operation is one call into the map), so a poisoned lock is still usable.
    fn entries(&self) -> std::sync::MutexGuard<'_, LruCache<String, (u64, Cached)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, stream: &str) -> Option<(u64, Cached)> {
        self.entries().get(stream).cloned()
    }

    /// Keep `state` at `version` unless a newer state is cached already.
    pub(crate) fn put(&self, stream: &str, version: u64, state: Cached) {
        let mut entries = self.entries();
        match entries.get_mut(stream) {
            Some(entry) if entry.0 >= version => {}
            Some(entry) => *entry = (version, state),
            None => {
                entries.put(stream.to_owned(), (version, state));
            }
        }
    }

    /// After this service appended `events` to `stream`, taking it from
    /// `from_version` to `to_version`: advance the cached state if it was at
    /// `from_version` (or the append created the stream), so the next load needs
    /// no read at all.
    ///
    /// The state is taken out of the cache and put back evolved under one hold
    /// of the lock (folding a few events is quick), not cloned: a cart's lines
    /// would be copied for every command otherwise. (It is copied when a load
    /// still holds it: the command's own load has let go of it by now.)
    pub(crate) fn advance(&self, stream: &str, from_version: u64, events: &[Event], to_version: u64) {
        let mut entries = self.entries();
        let cached_version = entries.peek(stream).map(|(version, _)| *version);
        let (key, state) = match (cached_version, events.first()) {
            (Some(version), _) if version == from_version => match entries.pop_entry(stream) {
                Some((key, (_, state))) => (key, state),
                None => return,
            },
            (None, Some(first)) if from_version == 0 => (stream.to_owned(), Cached::initial_for(first)),
            _ => return,
        };
        // A state an event does not fit is dropped: the next load reads the log.
        if let Some(state) = events.iter().try_fold(state, |state, event| state.evolve_with(event)) {
            entries.put(key, (to_version, state));
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CacheStats {
            hits: load(&self.counters.hits),
            partial_hits: load(&self.counters.partial_hits),
            misses: load(&self.counters.misses),
            events_folded: load(&self.counters.events_folded),
            streams: self.entries().len() as u64,
        }
    }
}
