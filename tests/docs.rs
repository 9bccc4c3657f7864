//! The README documents every key of the default configuration and every metric.

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// Every `section.key` written in conf/carousel.toml, including the commented-out examples.
fn config_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let mut section = String::new();
    for raw in carousel::config::DEFAULT_TOML.lines() {
        let line = raw.trim_start_matches('#').trim();
        if let Some(s) = line.strip_prefix('[') {
            let name = s.trim_start_matches('[').split(']').next().unwrap_or("");
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            {
                section = name.to_string();
            }
            continue;
        }
        let Some((key, _)) = line.split_once(" = ").or_else(|| line.split_once('=')) else {
            continue;
        };
        let key = key.trim();
        if section.is_empty()
            || key.is_empty()
            || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            continue;
        }
        // Only lines that look like settings (commented prose has spaces before '=').
        if raw.trim_start().starts_with('#')
            && !raw
                .trim_start_matches('#')
                .trim_start()
                .starts_with(&format!("{key} "))
        {
            continue;
        }
        let full = format!("{section}.{key}");
        if !keys.contains(&full) {
            keys.push(full);
        }
    }
    keys
}

#[test]
fn every_default_config_key_is_documented() {
    let readme = readme();
    let keys = config_keys();
    assert!(keys.len() > 50, "found only {keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "undocumented configuration keys: {missing:?}"
    );
}

#[test]
fn every_metric_is_documented() {
    let readme = readme();
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs")).unwrap();
    let names: Vec<&str> = src
        .split('"')
        .filter(|s| {
            s.starts_with("carousel_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !readme.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "undocumented metrics: {missing:?}");
}
