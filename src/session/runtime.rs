//! What a reload replaces as a whole, built once per load.

use std::sync::Arc;

use crate::config::Config;
use crate::dial::DialSettings;
use crate::policy::Policy;

/// What a reload replaces as a whole: configuration, rules and dial bounds.
pub struct Runtime {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The access rules.
    pub policy: Policy,
    /// Connect bounds.
    pub dial: DialSettings,
    /// How tunnels move bytes (the pipe budget is worked out once per load).
    pub tunnel: crate::tunnel::Options,
}

impl Runtime {
    /// The runtime view of a validated configuration.
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            policy: Policy::new(&config),
            dial: DialSettings::from(&config.dial),
            tunnel: crate::tunnel::Options::from_config(&config.tunnel),
            config,
        }
    }
}
