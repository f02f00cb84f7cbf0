//! `docs/architecture.md` stays true to the tree: its module map names every folder of
//! `src/`, and every path the page names exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn page() -> String {
    std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap()
}

/// The section of `markdown` under the heading `## {title}`, up to the next `## `.
fn section<'a>(markdown: &'a str, title: &str) -> &'a str {
    let heading = format!("\n## {title}\n");
    let start = markdown.find(&heading).expect("the section") + heading.len();
    let rest = &markdown[start..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The repository paths a text names in code spans: `src/…`, `tests/…` and the like.
/// A placeholder (`<vendor>`, `{vendor}`, `*`) ends the part that is checked.
fn named_paths(text: &str) -> BTreeSet<String> {
    const ROOTS: [&str; 10] = [
        "src/",
        "tests/",
        "docs/",
        "schema/",
        "config/",
        "deploy/",
        "benches/",
        "examples/",
        "testkit/",
        "scripts/",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| ROOTS.iter().any(|root| span.starts_with(root)))
        .filter(|span| !span.contains(char::is_whitespace))
        .map(|span| {
            let end = span.find(['<', '{', '*', '[']).unwrap_or(span.len());
            span[..end].to_owned()
        })
        .collect()
}

/// Every folder under `src/`, as `src/…/`.
fn src_folders(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let relative = path.strip_prefix(repo()).unwrap();
            out.push(format!("{}/", relative.display()));
            src_folders(&path, out);
        }
    }
}

#[test]
fn every_path_the_architecture_page_names_exists() {
    let missing: Vec<String> = named_paths(&page())
        .into_iter()
        .filter(|path| !repo().join(path).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist: {missing:?}"
    );
}

/// A binary's folder is one role (the CLI) however its commands are filed: a folder
/// under a named `src/bin/{name}/` is covered by it, so the map does not name the files
/// of the commands, and stays true when they move.
#[test]
fn the_module_map_names_every_folder_of_src() {
    let map = named_paths(section(&page(), "Module map"));
    let mut folders = Vec::new();
    src_folders(&repo().join("src"), &mut folders);
    folders.sort();
    assert!(folders.len() >= 8, "src/ has folders: {folders:?}");
    let covered = |folder: &String| {
        map.contains(folder)
            || map.iter().any(|named| {
                named.starts_with("src/bin/")
                    && named.ends_with('/')
                    && named.len() > "src/bin/".len()
                    && folder.starts_with(named.as_str())
            })
    };
    let missing: Vec<&String> = folders.iter().filter(|f| !covered(f)).collect();
    assert!(
        missing.is_empty(),
        "the module map of docs/architecture.md does not name {missing:?}"
    );
    assert!(map.contains("src/"), "the map names src/ itself");
}

#[test]
fn named_paths_are_read_from_code_spans_up_to_a_placeholder() {
    let text = "`src/broker/` and `tests/fixtures/<vendor>/x.json`, not `cargo test` or src/x.rs";
    assert_eq!(
        named_paths(text).into_iter().collect::<Vec<_>>(),
        ["src/broker/", "tests/fixtures/"]
    );
}
