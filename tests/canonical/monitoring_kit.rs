//! Tests of the monitoring kit in `deploy/` that need no Prometheus: every alert leads to
//! its runbook section, and the dashboard works on any Prometheus data source.

use std::collections::BTreeSet;
use std::path::Path;

use crate::docs::github_anchors;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The alert rules of `alerts.yml` as (name, runbook_url template). The file is written
/// one key per line; a rule the scan cannot read fails the test rather than passing it.
fn alert_rules(yaml: &str) -> Vec<(String, Option<String>)> {
    let mut rules: Vec<(String, Option<String>)> = Vec::new();
    for line in yaml.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert:") {
            rules.push((name.trim().to_owned(), None));
        } else if line.starts_with("- record:") {
            rules.push((String::new(), None));
        } else if let Some(url) = line.strip_prefix("runbook_url:") {
            let rule = rules.last_mut().unwrap();
            assert!(rule.1.is_none(), "two runbook_url in {}", rule.0);
            rule.1 = Some(url.trim().trim_matches(['\'', '"']).to_owned());
        }
    }
    let alerts = yaml.matches("alert:").count();
    assert_eq!(
        rules.iter().filter(|r| !r.0.is_empty()).count(),
        alerts,
        "every `alert:` is a `- alert: Name` line"
    );
    rules.retain(|r| !r.0.is_empty());
    rules
}

/// Every alert's `runbook_url` is the configurable base and an anchor of
/// `docs/operations.md` named after the alert, so a page leads to its runbook section.
#[test]
fn every_alert_has_a_runbook_section_in_operations_md() {
    let rules = alert_rules(&read("deploy/prometheus/alerts.yml"));
    let anchors = github_anchors(&read("docs/operations.md"));
    assert!(rules.len() >= 10, "{rules:?}");
    for (alert, url) in &rules {
        let url = url
            .as_deref()
            .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
        let (base, anchor) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{alert}: runbook_url {url} has no anchor"));
        assert_eq!(
            base, "{{ or $externalLabels.runbook_base \"docs/operations.md\" }}",
            "{alert}: the base is the runbook_base external label (docs/operations.md)"
        );
        assert_eq!(
            anchor,
            alert.to_lowercase(),
            "{alert}: the anchor is its runbook section's"
        );
        assert!(
            anchors.contains(anchor),
            "{alert}: docs/operations.md has no heading `### {alert}` (#{anchor})"
        );
    }
}

#[test]
fn github_anchors_follow_githubs_rules() {
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
}

/// The dashboard imports into any Grafana: its data source is a variable (no uid of ours),
/// and it can be narrowed to one worker and one vhost.
#[test]
fn the_dashboard_has_datasource_instance_and_vhost_variables() {
    let text = read("deploy/grafana/dashboards/webhook-normalizer.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for name in ["datasource", "instance", "vhost"] {
        assert!(
            variables.contains(name),
            "no ${name} variable: {variables:?}"
        );
    }
    let mut uids = Vec::new();
    collect_uids(&dashboard, &mut uids);
    assert!(!uids.is_empty());
    for uid in uids {
        assert_eq!(
            uid, "${datasource}",
            "a data source uid fixed in the dashboard"
        );
    }
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$instance\"") || expr.contains("vhost=~\"$vhost\""),
                "panel {} ignores the instance and vhost variables: {expr}",
                panel["title"]
            );
        }
    }
}

fn collect_uids<'a>(value: &'a serde_json::Value, uids: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(ds) = map.get("datasource") {
                if let Some(uid) = ds.get("uid").and_then(|u| u.as_str()) {
                    uids.push(uid);
                }
            }
            map.values().for_each(|v| collect_uids(v, uids));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_uids(v, uids)),
        _ => {}
    }
}
