//! Durations read at the config's edge: the keys keep their unit in the name
//! (`connect_timeout_ms`, `idle_timeout_seconds`), the program sees a `Duration`, so no consumer
//! converts (or picks the wrong unit) again.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A key in milliseconds.
pub mod millis {
    use super::*;

    /// Whole milliseconds into a `Duration`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A key in seconds.
pub mod seconds {
    use super::*;

    /// Whole seconds into a `Duration`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// An optional key in milliseconds (unset: the wider setting applies).
pub mod opt_millis {
    use super::*;

    /// Whole milliseconds into a `Duration`, if given.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|v| v.map(Duration::from_millis))
    }
}

/// An optional key in seconds (unset: the wider setting applies).
pub mod opt_seconds {
    use super::*;

    /// Whole seconds into a `Duration`, if given.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|v| v.map(Duration::from_secs))
    }
}
