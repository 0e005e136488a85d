//! The backup policy (`specs/backup/policies.yaml`) as the coordinator signs and
//! distributes it. Parsing from YAML, with file/line/column errors, lives in the
//! `schemas` crate; this module holds the model, its semantic checks and the rules
//! agents apply (which class a dataset falls in, which tiers it keeps).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dataset::DatasetName;
use crate::duration::Duration;

/// The whole policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// File format version; must be 1.
    pub version: u32,
    /// Prefix of the snapshots zdr takes; zdr never prunes snapshots without it.
    #[serde(default = "default_prefix")]
    pub snapshot_prefix: String,
    /// ZFS user property that assigns a dataset to a class (or `none` to exclude it).
    /// It wins over the name patterns in `datasets`.
    #[serde(default = "default_class_property")]
    pub class_property: String,
    /// Sites by name.
    pub sites: BTreeMap<String, Site>,
    /// Storage nodes by node id, with their site and media labels.
    pub nodes: BTreeMap<String, NodeLabels>,
    /// Dataset classes by name.
    pub classes: BTreeMap<String, Class>,
    /// Which datasets are protected; the first matching rule wins.
    pub datasets: Vec<Selector>,
}

fn default_prefix() -> String {
    "zdr".into()
}

fn default_class_property() -> String {
    "zdr:class".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Site {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeLabels {
    pub site: String,
    /// Media type label, such as `ssd`, `hdd` or `tape`; 3-2-1 counts distinct labels.
    pub media: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Class {
    /// Snapshot tiers: how many snapshots to keep per period. Defaults to
    /// hourly 48, daily 30, weekly 8.
    #[serde(default = "default_tiers")]
    pub tiers: Tiers,
    /// Recovery point objective: the most data, in time, this class may lose.
    pub rpo: Duration,
    /// Recovery time objective: how long a restore may take.
    pub rto: Duration,
    /// Snapshots younger than this are never destroyed, whatever the tiers say.
    #[serde(default = "zero")]
    pub immutable_for: Duration,
    /// 3-2-1 requirement.
    #[serde(default)]
    pub copies: Copies,
    /// Restore drills: how often, how many datasets each time.
    #[serde(default)]
    pub drill: Drill,
}

/// A class's restore drills. Each drill restores a sample of the class's
/// datasets from one of their copies into scratch and compares content with
/// production; the sample rotates, so any `ceil(n / sample)` drills in a
/// row cover all `n` datasets, and each dataset's copies take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// Time between two drills of the class. Defaults to 90 days.
    #[serde(default = "default_drill_every")]
    pub every: Duration,
    /// Datasets restored per drill. Defaults to 1.
    #[serde(default = "default_drill_sample")]
    pub sample: u32,
}

fn default_drill_every() -> Duration {
    Duration::from_secs(90 * 86_400)
}

fn default_drill_sample() -> u32 {
    1
}

impl Default for Drill {
    fn default() -> Self {
        Drill {
            every: default_drill_every(),
            sample: default_drill_sample(),
        }
    }
}

fn zero() -> Duration {
    Duration::from_secs(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Copies {
    /// Copies in all, production included.
    pub total: u8,
    /// Distinct media types among the copies.
    pub media: u8,
    /// Copies at a site other than production's.
    pub offsite: u8,
}

impl Default for Copies {
    fn default() -> Self {
        Copies {
            total: 3,
            media: 2,
            offsite: 1,
        }
    }
}

/// One protection rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Dataset name pattern: `*` matches within one path component, `**` any
    /// number of components (`tank/db/**` matches `tank/db` and all below it).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Class the matching datasets get. Required unless `exclude` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Leave matching datasets unprotected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude: bool,
}

/// A tier period: `hourly`, `daily`, `weekly`, or any duration such as `15m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(pub Duration);

const NAMED: [(&str, u64); 3] = [("hourly", 3_600), ("daily", 86_400), ("weekly", 604_800)];

impl FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((_, secs)) = NAMED.iter().find(|(n, _)| *n == s) {
            return Ok(Period(Duration::from_secs(*secs)));
        }
        let d: Duration = s.parse().map_err(|_| {
            format!(
                "{s:?} is not a tier; use hourly, daily, weekly or a duration such as 15m or 4h"
            )
        })?;
        if d.secs() == 0 {
            return Err(format!("tier {s:?} has a zero period"));
        }
        Ok(Period(d))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMED.iter().find(|(_, secs)| *secs == self.0.secs()) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Tiers keyed by period, kept in period order.
pub type Tiers = BTreeMap<Period, u32>;

impl JsonSchema for Period {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Period".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(hourly|daily|weekly|([0-9]+[smhdw])+)$"
        })
    }
}

pub fn default_tiers() -> Tiers {
    NAMED
        .iter()
        .zip([48, 30, 8])
        .map(|((_, secs), keep)| (Period(Duration::from_secs(*secs)), keep))
        .collect()
}

/// A semantic problem, located by its path in the document (`classes.gold.rpo`)
/// so the loader can point at the line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<String>,
    pub message: String,
}

fn problem(path: &[&str], message: String) -> Problem {
    Problem {
        path: path.iter().map(|s| s.to_string()).collect(),
        message,
    }
}

impl Policy {
    /// Every semantic problem in the policy; empty when it is sound.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.version != 1 {
            out.push(problem(
                &["version"],
                format!(
                    "version {} is not supported; this zdr reads version 1",
                    self.version
                ),
            ));
        }
        if self.snapshot_prefix.is_empty()
            || crate::dataset::check_component("prefix", &self.snapshot_prefix, 0).is_err()
            || self.snapshot_prefix.contains(' ')
        {
            out.push(problem(
                &["snapshot_prefix"],
                format!(
                    "{:?} cannot start a snapshot name; use letters, digits, - _ . or :",
                    self.snapshot_prefix
                ),
            ));
        }
        for (node, labels) in &self.nodes {
            if let Err(e) = crate::subject::valid_node_id(node) {
                out.push(problem(&["nodes", node], e));
            }
            if !self.sites.contains_key(&labels.site) {
                out.push(problem(
                    &["nodes", node, "site"],
                    format!(
                        "site {:?} is not declared under `sites` (declared: {})",
                        labels.site,
                        join_keys(&self.sites)
                    ),
                ));
            }
            if labels.media.is_empty() {
                out.push(problem(
                    &["nodes", node, "media"],
                    "media label is empty".into(),
                ));
            }
        }
        for (name, class) in &self.classes {
            self.class_problems(name, class, &mut out);
        }
        for (i, sel) in self.datasets.iter().enumerate() {
            let idx = i.to_string();
            if let Err(e) = Pattern::parse(&sel.pattern) {
                out.push(problem(&["datasets", &idx, "match"], e));
            }
            match (&sel.class, sel.exclude) {
                (Some(_), true) => out.push(problem(
                    &["datasets", &idx, "exclude"],
                    "a rule cannot both name a class and exclude; drop one".into(),
                )),
                (None, false) => out.push(problem(
                    &["datasets", &idx],
                    "rule needs a `class` (or `exclude: true`)".into(),
                )),
                (Some(c), false) if !self.classes.contains_key(c) => out.push(problem(
                    &["datasets", &idx, "class"],
                    format!(
                        "class {c:?} is not defined under `classes` (defined: {})",
                        join_keys(&self.classes)
                    ),
                )),
                _ => {}
            }
        }
        out
    }

    fn class_problems(&self, name: &str, class: &Class, out: &mut Vec<Problem>) {
        if class.tiers.is_empty() {
            out.push(problem(
                &["classes", name, "tiers"],
                "no tiers: the class would keep nothing".into(),
            ));
        }
        for (period, keep) in &class.tiers {
            if *keep == 0 {
                out.push(problem(
                    &["classes", name, "tiers", &period.to_string()],
                    format!("keeps 0 {period} snapshots; keep at least 1 or remove the tier"),
                ));
            }
        }
        if let Some(interval) = class.tiers.keys().next() {
            if class.rpo < interval.0 {
                out.push(problem(
                    &["classes", name, "rpo"],
                    format!(
                        "RPO {} is shorter than the snapshot interval {}; no schedule can meet it (add a tier of {} or less)",
                        class.rpo, interval.0, class.rpo
                    ),
                ));
            }
        }
        if class.rpo.secs() == 0 {
            out.push(problem(
                &["classes", name, "rpo"],
                "RPO must be more than 0".into(),
            ));
        }
        if class.rto.secs() == 0 {
            out.push(problem(
                &["classes", name, "rto"],
                "RTO must be more than 0".into(),
            ));
        }
        if class.drill.every.secs() == 0 {
            out.push(problem(
                &["classes", name, "drill", "every"],
                "a drill every 0s cannot be scheduled; give a duration such as 90d".into(),
            ));
        }
        if class.drill.sample == 0 {
            out.push(problem(
                &["classes", name, "drill", "sample"],
                "a sample of 0 drills nothing; restore at least 1 dataset per drill".into(),
            ));
        }
        let c = class.copies;
        if c.total == 0 {
            out.push(problem(
                &["classes", name, "copies", "total"],
                "at least 1 copy (production) is needed".into(),
            ));
        }
        if c.media > c.total {
            out.push(problem(
                &["classes", name, "copies", "media"],
                format!(
                    "{} media types cannot be spread over {} copies",
                    c.media, c.total
                ),
            ));
        }
        if c.offsite >= c.total.max(1) {
            out.push(problem(
                &["classes", name, "copies", "offsite"],
                format!(
                    "{} offsite copies out of {} leaves no production copy",
                    c.offsite, c.total
                ),
            ));
        }
        if c.offsite > 0 && self.sites.len() < 2 {
            out.push(problem(
                &["classes", name, "copies", "offsite"],
                "an offsite copy needs at least two sites under `sites`".into(),
            ));
        }
    }

    /// Rules that can never apply, as warnings (the policy still works):
    /// a rule whose every dataset an earlier rule matches first. A rule
    /// with a bad pattern is a problem instead and is skipped here.
    pub fn warnings(&self) -> Vec<Problem> {
        let parsed: Vec<Option<Pattern>> = self
            .datasets
            .iter()
            .map(|r| Pattern::parse(&r.pattern).ok())
            .collect();
        let mut out = Vec::new();
        for (i, p) in parsed.iter().enumerate() {
            let Some(p) = p else { continue };
            let earlier = parsed[..i]
                .iter()
                .position(|q| q.as_ref().is_some_and(|q| q.covers(p)));
            if let Some(j) = earlier {
                let by = &self.datasets[j];
                let what = match (&by.class, by.exclude) {
                    (_, true) => "excludes them".to_string(),
                    (Some(c), false) => format!("gives them class {c:?}"),
                    (None, false) => "takes them".to_string(),
                };
                out.push(problem(
                    &["datasets", &i.to_string(), "match"],
                    format!(
                        "this rule never applies: rule {j} (match {:?}) matches every dataset \
                         {:?} matches and {what} first (the first matching rule wins); \
                         move this rule above it or remove it",
                        by.pattern, self.datasets[i].pattern
                    ),
                ));
            }
        }
        out
    }

    /// The class of a dataset: the class property wins, then the first matching
    /// rule. `None` means unprotected.
    pub fn class_for(
        &self,
        dataset: &DatasetName,
        property: Option<&str>,
    ) -> Option<(&str, &Class)> {
        if let Some(value) = property {
            if value == "none" {
                return None;
            }
            if let Some((k, c)) = self.classes.get_key_value(value) {
                return Some((k.as_str(), c));
            }
        }
        let rule = self.datasets.iter().find(|r| {
            Pattern::parse(&r.pattern)
                .map(|p| p.matches(dataset))
                .unwrap_or(false)
        })?;
        if rule.exclude {
            return None;
        }
        let name = rule.class.as_deref()?;
        self.classes
            .get_key_value(name)
            .map(|(k, c)| (k.as_str(), c))
    }
}

fn join_keys<V>(m: &BTreeMap<String, V>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.keys().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
}

/// A dataset name pattern; see [`Selector::pattern`].
#[derive(Debug, Clone)]
pub struct Pattern {
    parts: Vec<String>,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty pattern".into());
        }
        let parts: Vec<String> = s.split('/').map(str::to_string).collect();
        for p in &parts {
            if p.is_empty() {
                return Err(format!("pattern {s:?} has an empty component"));
            }
            if p.contains("**") && p != "**" {
                return Err(format!(
                    "pattern {s:?}: `**` must be a whole component, as in tank/**"
                ));
            }
            let literal = p.replace('*', "");
            if !literal.is_empty() {
                crate::dataset::check_component(s, &literal, 0)
                    .map_err(|e| format!("pattern {s:?} cannot match any dataset: {e}"))?;
            }
        }
        Ok(Pattern { parts })
    }

    pub fn matches(&self, dataset: &DatasetName) -> bool {
        let names: Vec<&str> = dataset.as_str().split('/').collect();
        match_parts(&self.parts, &names)
    }

    /// Every dataset `other` matches, `self` matches too.
    ///
    /// Decided on the patterns themselves: each `**` of `other` stands for
    /// 0 to `self`'s length + 1 components that no literal of `self` can
    /// match (a longer run meets a `**` of `self`, which takes any number,
    /// so testing longer runs adds nothing), and a glob of `self` covers a
    /// glob of `other` when it matches it with `other`'s `*` read as a
    /// character only a `*` can take. Past [`COVER_LIMIT`] combinations the
    /// answer is `false`: a missed warning, never a false one.
    pub fn covers(&self, other: &Pattern) -> bool {
        let run = self.parts.len() + 1;
        let stars = other.parts.iter().filter(|p| *p == "**").count();
        let combinations = (run + 1).checked_pow(stars as u32);
        if combinations.is_none_or(|c| c > COVER_LIMIT) {
            return false;
        }
        let mut lens = vec![0usize; stars];
        loop {
            let mut expanded = Vec::new();
            let mut k = 0;
            for p in &other.parts {
                if p == "**" {
                    expanded.extend(std::iter::repeat_n(Part::Opaque, lens[k]));
                    k += 1;
                } else {
                    expanded.push(Part::Glob(p));
                }
            }
            if !cover_parts(&self.parts, &expanded) {
                return false;
            }
            // The next combination of run lengths, as an odometer.
            let Some(i) = lens.iter().position(|l| *l < run) else {
                return true;
            };
            lens[..i].iter_mut().for_each(|l| *l = 0);
            lens[i] += 1;
        }
    }
}

/// [`Pattern::covers`] tries at most this many expansions of `**`.
pub const COVER_LIMIT: usize = 10_000;

/// A component of a pattern being covered: its glob, or a component no
/// literal matches (what a `**` stands for).
#[derive(Clone, Copy)]
enum Part<'a> {
    Glob(&'a str),
    Opaque,
}

fn cover_parts(pat: &[String], other: &[Part]) -> bool {
    match pat.split_first() {
        None => other.is_empty(),
        Some((p, rest)) if p == "**" => (0..=other.len()).any(|i| cover_parts(rest, &other[i..])),
        Some((p, rest)) => match other.split_first() {
            // `glob` reads `o`'s `*` as a plain character, which only a
            // `*` of `p` can take: exactly the cover of one component.
            Some((Part::Glob(o), orest)) => glob(p, o) && cover_parts(rest, orest),
            Some((Part::Opaque, orest)) => p.bytes().all(|b| b == b'*') && cover_parts(rest, orest),
            None => false,
        },
    }
}

fn match_parts(pat: &[String], name: &[&str]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((p, rest)) if p == "**" => (0..=name.len()).any(|i| match_parts(rest, &name[i..])),
        Some((p, rest)) => match name.split_first() {
            Some((n, nrest)) => glob(p, n) && match_parts(rest, nrest),
            None => false,
        },
    }
}

/// `*` within one component.
fn glob(p: &str, n: &str) -> bool {
    match p.split_once('*') {
        None => p == n,
        Some((head, tail)) => {
            n.starts_with(head) && (head.len()..=n.len()).any(|i| glob(tail, &n[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("tank/db/**").unwrap();
        assert!(p.matches(&ds("tank/db")));
        assert!(p.matches(&ds("tank/db/pg/wal")));
        assert!(!p.matches(&ds("tank/dbx")));
        let p = Pattern::parse("tank/home/*").unwrap();
        assert!(p.matches(&ds("tank/home/alice")));
        assert!(!p.matches(&ds("tank/home")));
        assert!(!p.matches(&ds("tank/home/alice/x")));
        let p = Pattern::parse("*/vm-*").unwrap();
        assert!(p.matches(&ds("ssd/vm-101")));
        assert!(!p.matches(&ds("ssd/ct-101")));
        assert!(Pattern::parse("tank/a**").is_err());
        assert!(Pattern::parse("tank//a").is_err());
        assert!(Pattern::parse("tank/$x").is_err());
    }

    fn covers(a: &str, b: &str) -> bool {
        Pattern::parse(a)
            .unwrap()
            .covers(&Pattern::parse(b).unwrap())
    }

    #[test]
    fn pattern_cover() {
        assert!(covers("tank/**", "tank/db"));
        assert!(covers("tank/**", "tank/db/**"));
        assert!(covers("tank/**", "tank/*/x"));
        assert!(covers("**", "anything/**/x"));
        assert!(covers("tank/db*", "tank/db-*"));
        assert!(covers("*/vm-*", "ssd/vm-1*"));
        assert!(covers("tank/db", "tank/db"));
        // `**` may be empty: `*/**` is one or more components, as `**/a` is.
        assert!(covers("*/**", "**/a"));
        assert!(covers("**/*", "a/**"));
        assert!(!covers("tank/*", "tank/**"));
        assert!(!covers("tank/db/**", "tank/**"));
        assert!(!covers("tank/db-*", "tank/db*"));
        assert!(!covers("tank/*/x", "tank/**/x"));
        assert!(!covers("*/vm-*", "*/**"));
        assert!(!covers("a/**/b", "a/**"));
    }

    #[test]
    fn a_rule_behind_a_broader_one_is_warned_about() {
        let sel = |m: &str, class: Option<&str>| Selector {
            pattern: m.into(),
            class: class.map(str::to_string),
            exclude: class.is_none(),
        };
        let policy = Policy {
            version: 1,
            snapshot_prefix: default_prefix(),
            class_property: default_class_property(),
            sites: BTreeMap::new(),
            nodes: BTreeMap::new(),
            classes: BTreeMap::new(),
            datasets: vec![
                sel("tank/scratch/**", None),
                sel("tank/**", Some("bulk")),
                sel("tank/db", Some("critical")),
                sel("tank/scratch/tmp", Some("bulk")),
                sel("ssd/*", Some("critical")),
                sel("bad//pattern", Some("x")),
            ],
        };
        let w = policy.warnings();
        let paths: Vec<&Vec<String>> = w.iter().map(|p| &p.path).collect();
        assert_eq!(
            paths,
            [
                &vec!["datasets".to_string(), "2".into(), "match".into()],
                &vec!["datasets".to_string(), "3".into(), "match".into()]
            ]
        );
        assert!(
            w[0].message.contains("rule 1 (match \"tank/**\")"),
            "{}",
            w[0].message
        );
        assert!(
            w[0].message.contains("gives them class \"bulk\""),
            "{}",
            w[0].message
        );
        assert!(
            w[1].message.contains("rule 0 (match \"tank/scratch/**\")"),
            "{}",
            w[1].message
        );
        assert!(w[1].message.contains("excludes them"), "{}", w[1].message);
    }

    fn pattern_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let comp = prop_oneof!["\\*\\*", "[ab*]{1,3}"];
        proptest::collection::vec(comp, 1..4).prop_map(|c| c.join("/"))
    }

    /// A dataset name `b` matches, each `*` and `**` filled from `picks`.
    fn instance(b: &str, picks: &[u8]) -> Option<String> {
        const FILL: [&str; 6] = ["", "a", "b", "c", "ab", "cb"];
        let mut picks = picks.iter().cycle();
        let mut next = || usize::from(*picks.next().unwrap());
        let mut comps = Vec::new();
        for part in b.split('/') {
            if part == "**" {
                for _ in 0..next() % 3 {
                    comps.push(FILL[1 + next() % 5].to_string());
                }
            } else {
                let c: String = part
                    .chars()
                    .map(|ch| {
                        if ch == '*' {
                            FILL[next() % 6].to_string()
                        } else {
                            ch.to_string()
                        }
                    })
                    .collect();
                comps.push(c);
            }
        }
        (!comps.is_empty() && comps.iter().all(|c| !c.is_empty())).then(|| comps.join("/"))
    }

    proptest::proptest! {
        /// Never a false warning: every name `b` matches, `a` said to
        /// cover it matches too.
        #[test]
        fn cover_is_sound(
            a in pattern_text(),
            b in pattern_text(),
            picks in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
        ) {
            let (Ok(pa), Ok(pb)) = (Pattern::parse(&a), Pattern::parse(&b)) else {
                return Ok(());
            };
            if pa.covers(&pb) {
                for shift in 0..picks.len() {
                    let Some(n) = instance(&b, &picks[shift..]) else { continue };
                    let Ok(n) = DatasetName::parse(&n) else { continue };
                    proptest::prop_assert!(pb.matches(&n), "{b} should match {n}");
                    proptest::prop_assert!(pa.matches(&n), "{a} covers {b} but not {n}");
                }
            }
        }
    }

    #[test]
    fn periods() {
        assert_eq!("hourly".parse::<Period>().unwrap().0.secs(), 3600);
        assert_eq!("15m".parse::<Period>().unwrap().to_string(), "15m");
        assert_eq!("1d".parse::<Period>().unwrap().to_string(), "daily");
        assert!("hourlyy".parse::<Period>().is_err());
        assert!("0s".parse::<Period>().is_err());
    }
}
