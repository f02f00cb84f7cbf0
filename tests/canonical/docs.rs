//! The documentation holds together: every relative link in `README.md` and `docs/*.md`
//! leads to a file that exists, and every `#anchor` to a heading of the page it names
//! (GitHub's rules: lowercase, spaces to `-`, punctuation other than `-` and `_` dropped,
//! a repeated heading numbered `-1`, `-2`, …). No network: links to other sites are not
//! followed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown pages a reader of the repository reads: the README and `docs/*.md`.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(repo()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of `markdown` outside fenced code blocks, with their numbers (from 1).
fn prose_lines(markdown: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match fence {
            Some(open) => {
                if trimmed.starts_with(open) {
                    fence = None;
                }
            }
            None if trimmed.starts_with("```") => fence = Some("```"),
            None if trimmed.starts_with("~~~") => fence = Some("~~~"),
            None => out.push((i + 1, line)),
        }
    }
    out
}

/// A line with its code spans (`` `…` ``) blanked out, so that `[a](b)` quoted as code is
/// not taken for a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let fence = &rest[start..start + ticks];
        out.push_str(&rest[..start]);
        match rest[start + ticks..].find(fence) {
            Some(len) => {
                out.push_str(&" ".repeat(ticks * 2 + len));
                rest = &rest[start + ticks + len + ticks..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links (and images) of a line: `[text](target "title")`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        out.push(target.to_owned());
        rest = &after[end..];
    }
    out
}

/// The anchors GitHub gives the headings of a Markdown page.
pub fn github_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(markdown) {
        let Some(text) = line.strip_prefix('#') else {
            continue;
        };
        let text = text.trim_start_matches('#');
        if !text.starts_with(' ') {
            continue;
        }
        let slug: String = text
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

/// `path` relative to the repository, with `.` and `..` resolved; `None` when it leaves
/// the repository.
fn normalized(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Every broken relative link of the pages, as `page:line: target: why`.
fn broken_links() -> Vec<String> {
    let mut anchors: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut anchors_of = |page: &Path| -> BTreeSet<String> {
        anchors
            .entry(page.to_path_buf())
            .or_insert_with(|| {
                github_anchors(&std::fs::read_to_string(repo().join(page)).unwrap_or_default())
            })
            .clone()
    };
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(repo().join(&page)).unwrap();
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                let at = format!("{}:{number}: ({target})", page.display());
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = match target.split_once('#') {
                    Some((file, anchor)) => (file, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let linked = if file.is_empty() {
                    page.clone()
                } else {
                    match normalized(&page.parent().unwrap().join(file)) {
                        Some(p) => p,
                        None => {
                            broken.push(format!("{at}: leaves the repository"));
                            continue;
                        }
                    }
                };
                if !repo().join(&linked).exists() {
                    broken.push(format!("{at}: {} does not exist", linked.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if linked.extension().is_none_or(|e| e != "md") {
                    broken.push(format!("{at}: an anchor into a page that is not Markdown"));
                } else if !anchors_of(&linked).contains(anchor) {
                    broken.push(format!(
                        "{at}: {} has no heading #{anchor}",
                        linked.display()
                    ));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_leads_to_a_file_and_every_anchor_to_a_heading() {
    let broken = broken_links();
    assert!(
        broken.is_empty(),
        "broken links in the documentation:\n{}",
        broken.join("\n")
    );
}

/// The checker itself finds what it should: a link inside code is none, a missing file,
/// a missing heading and a page-local anchor are told apart.
#[test]
fn links_are_found_as_github_reads_them() {
    assert_eq!(
        link_targets("see [a](docs/a.md#x) and `[b](c.md)` and ![i](img.png \"t\")"),
        ["docs/a.md#x", "img.png"]
    );
    assert_eq!(link_targets("``[x](y)`` [z](<w.md>)"), ["w.md"]);
    let md = "# Ops runbook\n## Dead letters, by kind\n```\n# not a heading\n```\n## `dlq` (the tool)\n### NormalizerDown\n## Dead letters, by kind\n#hashtag\n";
    let anchors: Vec<_> = github_anchors(md).into_iter().collect();
    assert_eq!(
        anchors,
        [
            "dead-letters-by-kind",
            "dead-letters-by-kind-1",
            "dlq-the-tool",
            "normalizerdown",
            "ops-runbook"
        ]
    );
    assert_eq!(
        normalized(Path::new("docs/../README.md")),
        Some(PathBuf::from("README.md"))
    );
    assert_eq!(normalized(Path::new("../x")), None);
}
