//! The architecture as the README states it: imports go one way, down the module table ("a
//! module uses only modules below it"). Every `crate::x` a source file names (outside comments)
//! must be a module listed below its own, and every top-level module must be in the table, so
//! the table stays the truth and no import cycle can creep in.

use std::collections::HashMap;
use std::path::Path;

/// The table's modules, top to bottom.
fn layers() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("Imports go one way, down this table")
        .expect("the README states the layering");
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cell = l.split('|').nth(1)?.trim();
            let name = cell.strip_prefix('`')?.split('`').next()?;
            Some(name.trim_end_matches('/').to_string())
        })
        .collect()
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn imports_go_down_the_readme_table() {
    let order = layers();
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut problems = Vec::new();
    for path in all {
        let rel = path.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" {
            continue;
        }
        let Some(&mine) = rank.get(module.as_str()) else {
            problems.push(format!(
                "src/{} is not in the README's module table",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let used: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used == module || used.is_empty() {
                    continue;
                }
                match rank.get(used.as_str()) {
                    Some(&theirs) if theirs > mine => {}
                    Some(_) => problems.push(format!(
                        "src/{}:{}: `{module}` uses `{used}`, which the table lists above it",
                        rel.display(),
                        n + 1
                    )),
                    None => problems.push(format!(
                        "src/{}:{}: `{used}` is not in the README's module table",
                        rel.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
