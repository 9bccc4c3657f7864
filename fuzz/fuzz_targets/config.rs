//! TOML config loader: never panics on any UTF-8 text, and every refusal
//! carries the file label, a key and a line within the text.
#![no_main]

use carousel::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, FILE) {
        Ok(cfg) => {
            assert!(!cfg.listeners.is_empty());
            let _ = cfg.summary();
        }
        Err(ConfigError::Invalid {
            file, key, line, ..
        }) => {
            assert_eq!(file, FILE);
            // The key is `-` when unknown; it is empty only when the offending
            // key really is the empty quoted key (`'' = 1`, `"" = 1`), which TOML allows.
            assert!(
                !key.is_empty() || text.contains("''") || text.contains("\"\""),
                "error without a key"
            );
            // 1-based line, 0 = unknown; never past the last line.
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            assert!(line <= lines, "line {line} > {lines} lines");
        }
        Err(ConfigError::Syntax { file, line, column, .. }) => {
            assert_eq!(file, FILE);
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            assert!(line <= lines && column >= 1, "line {line} col {column}");
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse() never reads: {e}"),
    }
});
