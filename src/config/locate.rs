//! Where in the file a key is: the line of a dotted key path, and the key path at a byte
//! offset (for serde's errors), so every configuration error names file, key and line.

pub(super) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// One step of a key path.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn parse_path(key: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(n));
            }
        }
    }
    out
}

/// The line where a dotted key path (as produced by `validate`) is written, or 0.
pub(super) fn line_of_key(text: &str, key: &str) -> usize {
    use toml::de::{DeTable, DeValue};
    let Ok(root) = DeTable::parse(text) else {
        return 0;
    };
    let mut span = 0..0;
    let mut table: Option<&DeTable> = Some(root.get_ref());
    let mut value: Option<&DeValue> = None;
    for seg in parse_path(key) {
        match seg {
            Seg::Key(k) => {
                let Some(t) = table.or(match value {
                    Some(DeValue::Table(t)) => Some(t),
                    _ => None,
                }) else {
                    break;
                };
                let Some((kk, v)) = t.iter().find(|(kk, _)| kk.get_ref().as_ref() == k) else {
                    break;
                };
                span = kk.span();
                value = Some(v.get_ref());
                table = None;
            }
            Seg::Index(n) => {
                let Some(DeValue::Array(a)) = value else {
                    break;
                };
                let Some(v) = a.get(n) else { break };
                span = v.span();
                value = Some(v.get_ref());
            }
        }
    }
    if span == (0..0) {
        0
    } else {
        line_at(text, span.start)
    }
}

/// The dotted key path whose text contains byte `offset`, and the line of `offset`.
pub(super) fn locate_span(text: &str, offset: usize) -> (String, usize) {
    use toml::de::{DeTable, DeValue};
    fn within(span: std::ops::Range<usize>, offset: usize) -> bool {
        span.start <= offset && offset < span.end.max(span.start + 1)
    }
    // Table values' spans may cover only their header, so every table is searched.
    fn walk(t: &DeTable, offset: usize, path: &mut Vec<String>) -> bool {
        for (k, v) in t.iter() {
            let key = k.get_ref().to_string();
            let on_key = within(k.span(), offset);
            match v.get_ref() {
                DeValue::Table(inner) => {
                    path.push(key);
                    if walk(inner, offset, path) || on_key {
                        return true;
                    }
                    path.pop();
                }
                DeValue::Array(a) => {
                    for (i, item) in a.iter().enumerate() {
                        path.push(format!("{key}[{i}]"));
                        let found = match item.get_ref() {
                            DeValue::Table(inner) => walk(inner, offset, path),
                            _ => false,
                        };
                        if found || within(item.span(), offset) {
                            return true;
                        }
                        path.pop();
                    }
                    if on_key || within(v.span(), offset) {
                        path.push(key);
                        return true;
                    }
                }
                _ => {
                    if on_key || within(v.span(), offset) {
                        path.push(key);
                        return true;
                    }
                }
            }
        }
        false
    }
    let line = line_at(text, offset);
    let mut path = Vec::new();
    if let Ok(root) = DeTable::parse(text) {
        walk(root.get_ref(), offset, &mut path);
    }
    let key = if path.is_empty() {
        "-".to_string()
    } else {
        path.join(".")
    };
    (key, line)
}
