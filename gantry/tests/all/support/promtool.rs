//! Prometheus's own evaluation of alert rules and dashboard queries over what Gantry really
//! exports: `/metrics` scrapes taken one per round of a test's traffic become the input series
//! of a `promtool test rules` file, as a Prometheus scraping every [`STEP`] would have stored
//! them (with its `job` and `instance` labels and its synthetic `up` series), then continued
//! in the steady state of the last round for as long as the rules' `for:` clauses need.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// The scrape interval the series are laid out at: one round of traffic is one scrape.
pub const STEP_SECONDS: u64 = 15;

const JOB: &str = "gantry";
const INSTANCE: &str = "gantry:9090";

/// The scrapes of one situation, in order; `None` is a scrape that failed.
#[derive(Default)]
pub struct Scrapes(Vec<Option<String>>);

/// One series over the scrapes: its value at each, if it was there.
struct Series {
    counter: bool,
    values: Vec<Option<f64>>,
}

impl Scrapes {
    pub fn push(&mut self, scrape: Option<String>) {
        self.0.push(scrape);
    }

    /// The `input_series` of a promtool test: every series of every scrape, each scrape a
    /// [`STEP_SECONDS`] apart, then `steady` more steps in which counters keep rising as in
    /// the last step and gauges keep their last value (a series missing from the last scrape
    /// stays missing, as a series goes stale when a scrape fails).
    pub fn input_series(&self, steady: usize) -> String {
        let mut all: BTreeMap<String, Series> = BTreeMap::new();
        let up = format!("up{{instance=\"{INSTANCE}\",job=\"{JOB}\"}}");
        all.insert(
            up,
            Series {
                counter: false,
                values: self
                    .0
                    .iter()
                    .map(|s| Some(if s.is_some() { 1.0 } else { 0.0 }))
                    .collect(),
            },
        );
        for (at, scrape) in self.0.iter().enumerate() {
            let Some(text) = scrape else { continue };
            for (name, counter, value) in samples(text) {
                let series = all.entry(name).or_insert_with(|| Series {
                    counter,
                    values: vec![None; self.0.len()],
                });
                series.values[at] = Some(value);
            }
        }
        let mut out = String::new();
        for (name, series) in &all {
            let _ = writeln!(out, "      - series: '{name}'");
            let _ = writeln!(out, "        values: '{}'", series.notation(steady));
        }
        out
    }
}

impl Series {
    /// promtool's notation for the values, then the steady state.
    fn notation(&self, steady: usize) -> String {
        let mut words: Vec<String> = self
            .values
            .iter()
            .map(|v| v.map_or_else(|| "_".to_owned(), number))
            .collect();
        let last = self.values.last().copied().flatten();
        match last {
            Some(last) => {
                let before = self.values.iter().rev().nth(1).copied().flatten();
                let delta = match before {
                    Some(before) if self.counter && last >= before => last - before,
                    _ => 0.0,
                };
                // `a+bxn` is n+1 values: a, a+b, ... a+n*b.
                words.push(format!(
                    "{}+{}x{}",
                    number(last + delta),
                    number(delta),
                    steady - 1
                ));
            }
            None => words.extend(std::iter::repeat_n("_".to_owned(), steady)),
        }
        words.join(" ")
    }
}

fn number(value: f64) -> String {
    format!("{value}")
}

/// The samples of a text-format scrape: series name with Prometheus's target labels added,
/// whether it is a counter (a counter family or a histogram's parts), and its value.
fn samples(text: &str) -> Vec<(String, bool, f64)> {
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let mut words = typed.split(' ');
            if let (Some(family), Some(kind)) = (words.next(), words.next()) {
                kinds.insert(family, kind);
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value` line");
        let value: f64 = value.parse().expect("sample value");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| kinds.get(family) == Some(&"histogram"))
            .unwrap_or(name);
        let counter = matches!(kinds.get(family), Some(&"counter" | &"histogram"));
        let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        let target = [format!("instance=\"{INSTANCE}\""), format!("job=\"{JOB}\"")];
        labels.extend(target.iter().map(String::as_str));
        labels.sort_unstable();
        out.push((format!("{name}{{{}}}", labels.join(",")), counter, value));
    }
    out
}

/// An alert expected at one evaluation time: firing with exactly these label sets (the
/// rule's own labels are added), or silent when there are none.
pub struct AlertCheck {
    pub alert: &'static str,
    pub eval_minutes: u64,
    pub firing: Vec<Vec<(&'static str, String)>>,
}

/// A query expected at one evaluation time to give exactly these samples.
pub struct QueryCheck {
    pub what: String,
    pub expr: String,
    pub eval_minutes: u64,
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// One promtool test: the series of a situation and what must hold over them.
pub struct Situation<'a> {
    pub name: &'a str,
    pub scrapes: &'a Scrapes,
    pub steady_steps: usize,
    pub alerts: Vec<AlertCheck>,
    pub queries: Vec<QueryCheck>,
}

/// A rule of the rule file, by alert name: its labels and its summary template.
struct Rule {
    labels: BTreeMap<String, String>,
    summary: String,
}

fn rules(rule_file: &Path) -> BTreeMap<String, Rule> {
    let text = std::fs::read_to_string(rule_file).expect("rule file");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("rule YAML");
    let mut out = BTreeMap::new();
    for group in yaml["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            let labels = rule["labels"]
                .as_mapping()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().expect("label").to_owned(),
                                v.as_str().expect("label value").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let summary = rule["annotations"]["summary"]
                .as_str()
                .expect("summary")
                .to_owned();
            out.insert(name, Rule { labels, summary });
        }
    }
    out
}

/// `{{ $labels.name }}` in a template, filled in.
fn render(template: &str, labels: &[(&'static str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in labels {
        out = out.replace(&format!("{{{{ $labels.{name} }}}}"), value);
    }
    assert!(
        !out.contains("{{"),
        "a template label the check does not give: {out}"
    );
    out
}

fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("string")
}

/// Writes the promtool test file for `situations` over `rule_file` into `dir`, runs
/// `promtool test rules` on it, and fails the test with promtool's report unless every
/// expectation holds.
pub fn check(dir: &Path, rule_file: &Path, situations: &[Situation<'_>]) {
    let rules = rules(rule_file);
    let mut file = format!(
        "rule_files: [{}]\nevaluation_interval: {STEP_SECONDS}s\ntests:\n",
        yaml_string(&rule_file.display().to_string())
    );
    let mut checked: BTreeSet<&str> = BTreeSet::new();
    for situation in situations {
        let _ = writeln!(file, "  # {}", situation.name);
        let _ = writeln!(file, "  - interval: {STEP_SECONDS}s\n    input_series:");
        file.push_str(&situation.scrapes.input_series(situation.steady_steps));
        file.push_str("    alert_rule_test:\n");
        for check in &situation.alerts {
            let rule = rules
                .get(check.alert)
                .unwrap_or_else(|| panic!("no alert {} in the rule file", check.alert));
            checked.insert(check.alert);
            let _ = writeln!(
                file,
                "      - eval_time: {}m\n        alertname: {}\n        exp_alerts:{}",
                check.eval_minutes,
                check.alert,
                if check.firing.is_empty() { " []" } else { "" }
            );
            for labels in &check.firing {
                let mut all: BTreeMap<String, String> = rule.labels.clone();
                all.extend(labels.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
                let _ = writeln!(file, "          - exp_labels:");
                for (name, value) in &all {
                    let _ = writeln!(file, "              {name}: {}", yaml_string(value));
                }
                let _ = writeln!(
                    file,
                    "            exp_annotations:\n              summary: {}",
                    yaml_string(&render(&rule.summary, labels))
                );
            }
        }
        if !situation.queries.is_empty() {
            file.push_str("    promql_expr_test:\n");
        }
        for query in &situation.queries {
            let _ = writeln!(file, "      # {}", query.what);
            let _ = writeln!(
                file,
                "      - expr: {}\n        eval_time: {}m\n        exp_samples:{}",
                yaml_string(&query.expr),
                query.eval_minutes,
                if query.samples.is_empty() { " []" } else { "" }
            );
            for (labels, value) in &query.samples {
                let labels: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                let _ = writeln!(
                    file,
                    "          - labels: {}\n            value: {}",
                    yaml_string(&format!("{{{}}}", labels.join(","))),
                    number(*value)
                );
            }
        }
    }
    let unchecked: Vec<&String> = rules
        .keys()
        .filter(|name| !checked.contains(name.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "alerts no situation checks: {unchecked:?}"
    );

    let path = dir.join("gantry-rules-test.yaml");
    std::fs::write(&path, &file).expect("write the promtool test");
    let output = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian package `prometheus`; `bash .ci/setup` installs it): {e}")
        });
    assert!(
        output.status.success(),
        "promtool test rules failed:\n{}{}\n--- the test file ---\n{file}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
