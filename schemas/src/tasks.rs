//! Replication tasks (`specs/replication/tasks.yml`): which datasets are
//! copied where, when and how fast. Only the coordinator reads them; it plans
//! the sends and tells agents what to do.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zdr_common::dataset::DatasetName;
use zdr_common::duration::Duration;
use zdr_common::policy::{Pattern, Policy, Problem, Tiers};

use crate::buckets::{bucket_task_problems, BucketTask};
use crate::clock::{TimeOfDay, Window};
use crate::de::hint;
use crate::rate::Rate;

/// The whole tasks file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tasks {
    /// File format version; must be 1.
    pub version: u32,
    /// Replication tasks; each runs on its own schedule.
    pub tasks: Vec<Task>,
    /// Bandwidth budgets between two sites, shared by every transfer between them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Uploads to object storage (S3, B2): see [`crate::buckets`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<BucketTask>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique name, shown in logs, metrics and `zdr status`.
    pub name: String,
    /// Which datasets to copy.
    pub source: Source,
    /// Where the copies go.
    pub target: Target,
    pub schedule: Schedule,
    /// Transfer rate cap for this task; unlimited when absent.
    #[serde(default)]
    pub bandwidth: Bandwidth,
    /// Send every snapshot taken since the last run in one `zfs send -I`
    /// stream (true), or only the newest with `-i` (false), so the target
    /// holds fewer snapshots.
    #[serde(default = "yes")]
    pub keep_intermediates: bool,
    /// Let `zfs recv -F` roll a diverged target back to the last common
    /// snapshot. When false a diverged target stops the task for a human to look at.
    #[serde(default)]
    pub allow_rollback: bool,
    /// Send every dataset raw (`zfs send -w`), as stored (compressed, and
    /// encrypted where it is). With `false`, unencrypted datasets go as plain
    /// streams; encrypted datasets go raw all the same, so the target never
    /// holds a key or decrypted data.
    #[serde(default = "yes")]
    pub raw: bool,
    /// Compression of the stream on the wire (raw sends are already compressed as stored).
    #[serde(default)]
    pub compress: Compress,
    /// Retention on the target; the source class's tiers when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

fn yes() -> bool {
    true
}

/// Datasets are selected when they match every given criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Datasets the policy puts in this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Dataset name patterns, one or a list, as in the policy's `datasets`
    /// (`*` within a component, `**` any depth); a dataset matching any of them is selected.
    #[serde(
        rename = "match",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    #[schemars(schema_with = "one_or_many_schema")]
    pub patterns: Vec<String>,
    /// Only datasets on these nodes; every node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;

    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a pattern or a list of patterns")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vec<String>, E> {
            Ok(vec![s.to_string()])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(p) = seq.next_element()? {
                out.push(p);
            }
            Ok(out)
        }
    }

    d.deserialize_any(OneOrMany)
}

fn one_or_many_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "anyOf": [
            { "type": "string" },
            { "type": "array", "items": { "type": "string" } }
        ]
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `same` (the source node's site), `other` (any other site) or a site name.
    pub site: SiteChoice,
    /// `same`, `different` (from the source node's media), `any`, or a media label such as `hdd`.
    #[serde(default = "any_media")]
    pub media: MediaChoice,
    /// Pool on the target that receives the replicas, under `<pool>/<source node>`.
    /// Shorthand for `root: <pool>/{node}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Dataset on the target under which replicas land, keeping their full
    /// source name: `backup/{node}` puts `tank/db` of node n1 at `backup/n1/tank/db`.
    /// `{node}` and `{site}` are the source node's id and site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

fn any_media() -> MediaChoice {
    MediaChoice::Any
}

impl Target {
    /// The root template in force, `{node}` and `{site}` not yet filled in.
    pub fn root_template(&self) -> Option<String> {
        match (&self.pool, &self.root) {
            (Some(pool), None) => Some(format!("{pool}/{{node}}")),
            (None, Some(root)) => Some(root.clone()),
            _ => None,
        }
    }
}

const PLACEHOLDERS: [&str; 2] = ["node", "site"];

/// Fills in `{node}` and `{site}`; refuses any other placeholder.
pub fn expand_root(template: &str, node: &str, site: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("root {template:?} has a `{{` without its `}}`"))?;
        let name = &rest[open + 1..open + close];
        match name {
            "node" => out.push_str(node),
            "site" => out.push_str(site),
            _ => {
                return Err(format!(
                    "root {template:?} uses `{{{name}}}`; only {} can be filled in",
                    PLACEHOLDERS.map(|p| format!("`{{{p}}}`")).join(" and ")
                ))
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    if out.contains('}') {
        return Err(format!("root {template:?} has a `}}` without its `{{`"));
    }
    Ok(out)
}

/// Target site, relative to the source node's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SiteChoice {
    Same,
    Other,
    Named(String),
}

/// Target media, relative to the source node's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MediaChoice {
    Same,
    Different,
    Any,
    Label(String),
}

impl SiteChoice {
    pub fn accepts(&self, source_site: &str, site: &str) -> bool {
        match self {
            SiteChoice::Same => site == source_site,
            SiteChoice::Other => site != source_site,
            SiteChoice::Named(name) => site == name,
        }
    }
}

impl MediaChoice {
    pub fn accepts(&self, source_media: &str, media: &str) -> bool {
        match self {
            MediaChoice::Same => media == source_media,
            MediaChoice::Different => media != source_media,
            MediaChoice::Any => true,
            MediaChoice::Label(label) => media == label,
        }
    }
}

impl FromStr for SiteChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" => return Err("site is empty; use `same`, `other` or a site name".into()),
            "same" => SiteChoice::Same,
            "other" => SiteChoice::Other,
            name => SiteChoice::Named(name.into()),
        })
    }
}

impl FromStr for MediaChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" => {
                return Err(
                    "media is empty; use `same`, `different`, `any` or a media label".into(),
                )
            }
            "same" => MediaChoice::Same,
            "different" => MediaChoice::Different,
            "any" => MediaChoice::Any,
            label => MediaChoice::Label(label.into()),
        })
    }
}

impl fmt::Display for SiteChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SiteChoice::Same => "same",
            SiteChoice::Other => "other",
            SiteChoice::Named(name) => name,
        })
    }
}

impl fmt::Display for MediaChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MediaChoice::Same => "same",
            MediaChoice::Different => "different",
            MediaChoice::Any => "any",
            MediaChoice::Label(label) => label,
        })
    }
}

macro_rules! choice_serde {
    ($ty:ty, $name:literal, $description:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                schemars::json_schema!({ "type": "string", "minLength": 1, "description": $description })
            }
        }
    };
}

choice_serde!(
    SiteChoice,
    "SiteChoice",
    "`same`, `other`, or a site name from the policy."
);
choice_serde!(
    MediaChoice,
    "MediaChoice",
    "`same`, `different`, `any`, or a media label used by nodes in the policy."
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// How often to replicate, such as `15m`; at least `1s`.
    pub every: Duration,
    /// Start runs only within this daily window, UTC, such as `22:00-06:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    /// The cap outside the windows: `50MB/s`, `500KiB/s` or `unlimited`.
    #[serde(default)]
    pub limit: Rate,
    /// Other caps at given times of day (UTC); they may not overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<RateWindow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateWindow {
    pub from: TimeOfDay,
    /// Wraps past midnight when earlier than `from`.
    pub to: TimeOfDay,
    pub limit: Rate,
}

impl RateWindow {
    pub fn window(&self) -> Window {
        Window {
            from: self.from,
            to: self.to,
        }
    }
}

impl Bandwidth {
    /// The cap in force `minute` minutes after midnight UTC.
    pub fn limit_at(&self, minute: u16) -> Rate {
        limit_at(self.limit, &self.windows, minute)
    }
}

/// A bandwidth budget between two sites. Both directions share it: a
/// transfer from either site to the other counts against the same budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The two sites, in either order, such as `[fra1, ams1]`.
    #[schemars(length(equal = 2))]
    pub between: Vec<String>,
    /// The budget outside the windows: `200MB/s`, `500KiB/s` or `unlimited`.
    #[serde(default)]
    pub limit: Rate,
    /// Other budgets at given times of day (UTC); they may not overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<RateWindow>,
}

impl Link {
    /// Whether transfers between these two sites, either way, use this budget.
    pub fn joins(&self, a: &str, b: &str) -> bool {
        matches!(self.between.as_slice(), [x, y] if (x == a && y == b) || (x == b && y == a))
    }

    /// The budget in force `minute` minutes after midnight UTC.
    pub fn limit_at(&self, minute: u16) -> Rate {
        limit_at(self.limit, &self.windows, minute)
    }
}

fn limit_at(limit: Rate, windows: &[RateWindow], minute: u16) -> Rate {
    windows
        .iter()
        .find(|w| w.window().contains(minute))
        .map_or(limit, |w| w.limit)
}

/// Stream compression on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    None,
    #[default]
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Snapshot tiers kept on the target, as in a policy class.
    pub tiers: Tiers,
}

pub(crate) fn problem(path: &[&str], message: String) -> Problem {
    Problem {
        path: path.iter().map(|s| s.to_string()).collect(),
        message,
    }
}

fn names<'a>(it: impl IntoIterator<Item = &'a String>) -> Vec<&'a str> {
    it.into_iter().map(String::as_str).collect()
}

/// `"x" is not <what>; did you mean ...` for a name the policy does not know.
fn unknown(what: &str, got: &str, known: &[&str]) -> String {
    format!(
        "{got:?} is not {what} in the policy; {}",
        hint(got, known, "known")
    )
}

fn valid_task_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "task name {name:?} must be 1 to 64 characters long"
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "task name {name:?} contains {c:?}; use only ASCII letters, digits, '-', '_' and '.'"
        )),
        None => Ok(()),
    }
}

impl Tasks {
    /// Every semantic problem, checked against the policy the tasks refer to;
    /// empty when the tasks are sound.
    pub fn problems(&self, policy: &Policy) -> Vec<Problem> {
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
        for (i, task) in self.tasks.iter().enumerate() {
            let mut found = Vec::new();
            if let Err(e) = valid_task_name(&task.name) {
                found.push(problem(&["name"], e));
            }
            if let Some(first) = self.tasks[..i].iter().position(|t| t.name == task.name) {
                found.push(problem(
                    &["name"],
                    format!(
                        "task name {:?} is already used by tasks[{first}]; names must be unique",
                        task.name
                    ),
                ));
            }
            found.extend(task_problems(task, policy));
            for mut p in found {
                p.path.splice(0..0, ["tasks".to_string(), i.to_string()]);
                out.push(p);
            }
        }
        for (i, task) in self.buckets.iter().enumerate() {
            let mut found = Vec::new();
            if let Err(e) = valid_task_name(&task.name) {
                found.push(problem(&["name"], e));
            }
            let earlier = self
                .tasks
                .iter()
                .map(|t| &t.name)
                .position(|n| *n == task.name)
                .map(|j| format!("tasks[{j}]"))
                .or_else(|| {
                    self.buckets[..i]
                        .iter()
                        .position(|t| t.name == task.name)
                        .map(|j| format!("buckets[{j}]"))
                });
            if let Some(first) = earlier {
                found.push(problem(
                    &["name"],
                    format!(
                        "task name {:?} is already used by {first}; names must be unique among tasks and buckets",
                        task.name
                    ),
                ));
            }
            found.extend(bucket_task_problems(task, policy));
            for mut p in found {
                p.path.splice(0..0, ["buckets".to_string(), i.to_string()]);
                out.push(p);
            }
        }
        for (i, link) in self.links.iter().enumerate() {
            for mut p in link_problems(link, &self.links[..i], policy) {
                p.path.splice(0..0, ["links".to_string(), i.to_string()]);
                out.push(p);
            }
        }
        out
    }
}

fn link_problems(link: &Link, earlier: &[Link], policy: &Policy) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, site) in link.between.iter().enumerate() {
        if !policy.sites.contains_key(site) {
            out.push(problem(
                &["between", &i.to_string()],
                unknown("a site", site, &names(policy.sites.keys())),
            ));
        }
    }
    match link.between.as_slice() {
        [a, b] if a == b => out.push(problem(
            &["between", "1"],
            format!("names {a:?} twice; a link joins two different sites (transfers within a site have no link budget)"),
        )),
        [a, b] => {
            if let Some(j) = earlier.iter().position(|l| l.joins(a, b)) {
                out.push(problem(
                    &["between"],
                    format!(
                        "{a} and {b} already have a budget in links[{j}]; both directions share one, so give each pair once"
                    ),
                ));
            }
        }
        other => out.push(problem(
            &["between"],
            format!("lists {} sites; a link is between exactly two", other.len()),
        )),
    }
    if link.limit == Rate::UNLIMITED && link.windows.is_empty() {
        out.push(problem(
            &["limit"],
            "the link is unlimited at all times; give a `limit` or `windows`, or remove the link"
                .into(),
        ));
    }
    window_problems(&link.windows, &["windows"], &mut out);
    out
}

fn task_problems(task: &Task, policy: &Policy) -> Vec<Problem> {
    let mut out = Vec::new();
    source_problems(&task.source, policy, &mut out);
    target_problems(task, policy, &mut out);
    if task.schedule.every.secs() == 0 {
        out.push(problem(
            &["schedule", "every"],
            "must be at least 1s".into(),
        ));
    }
    window_problems(&task.bandwidth.windows, &["bandwidth", "windows"], &mut out);
    if let Some(retention) = &task.retention {
        if retention.tiers.is_empty() {
            out.push(problem(
                &["retention", "tiers"],
                "no tiers: the target would keep nothing".into(),
            ));
        }
        for (period, keep) in &retention.tiers {
            if *keep == 0 {
                out.push(problem(
                    &["retention", "tiers", &period.to_string()],
                    format!("keeps 0 {period} snapshots; keep at least 1 or remove the tier"),
                ));
            }
        }
    }
    out
}

/// Empty and overlapping rate windows, under `at` (the path of the list).
pub(crate) fn window_problems(windows: &[RateWindow], at: &[&str], out: &mut Vec<Problem>) {
    for (i, w) in windows.iter().enumerate() {
        let idx = i.to_string();
        let path: Vec<&str> = at.iter().copied().chain([idx.as_str()]).collect();
        if let Some(p) = w.window().problem() {
            out.push(problem(&path, p));
        }
        if let Some(j) = windows[..i]
            .iter()
            .position(|o| o.window().overlaps(&w.window()))
        {
            out.push(problem(
                &path,
                format!(
                    "window {} overlaps windows[{j}] ({}); only one limit can apply at a time, so split or shorten one",
                    w.window(),
                    windows[j].window()
                ),
            ));
        }
    }
}

pub(crate) fn source_problems(source: &Source, policy: &Policy, out: &mut Vec<Problem>) {
    if source.class.is_none() && source.patterns.is_empty() {
        out.push(problem(
            &["source"],
            "select datasets with `class`, `match` or both".into(),
        ));
    }
    if let Some(class) = &source.class {
        if !policy.classes.contains_key(class) {
            out.push(problem(
                &["source", "class"],
                unknown("a class", class, &names(policy.classes.keys())),
            ));
        }
    }
    for (i, p) in source.patterns.iter().enumerate() {
        if let Err(e) = Pattern::parse(p) {
            out.push(problem(&["source", "match", &i.to_string()], e));
        }
    }
    if let Some(nodes) = &source.nodes {
        if nodes.is_empty() {
            out.push(problem(
                &["source", "nodes"],
                "lists no nodes; leave `nodes` out to mean every node".into(),
            ));
        }
        for (i, node) in nodes.iter().enumerate() {
            if !policy.nodes.contains_key(node) {
                out.push(problem(
                    &["source", "nodes", &i.to_string()],
                    unknown("a node", node, &names(policy.nodes.keys())),
                ));
            }
        }
    }
}

fn target_problems(task: &Task, policy: &Policy, out: &mut Vec<Problem>) {
    let target = &task.target;
    let mut labels_known = true;
    if let SiteChoice::Named(site) = &target.site {
        if !policy.sites.contains_key(site) {
            out.push(problem(
                &["target", "site"],
                unknown("a site", site, &names(policy.sites.keys())),
            ));
            labels_known = false;
        }
    }
    let media: BTreeSet<&String> = policy.nodes.values().map(|n| &n.media).collect();
    if let MediaChoice::Label(label) = &target.media {
        if !media.contains(label) {
            out.push(problem(
                &["target", "media"],
                format!(
                    "no node in the policy has media {label:?}; {}",
                    hint(label, &names(media.iter().copied()), "media in use")
                ),
            ));
            labels_known = false;
        }
    }
    let sources: Vec<(&String, &zdr_common::policy::NodeLabels)> = match &task.source.nodes {
        Some(listed) => listed
            .iter()
            .filter_map(|n| policy.nodes.get_key_value(n))
            .collect(),
        None => policy.nodes.iter().collect(),
    };
    let receivers = |node: &str, labels: &zdr_common::policy::NodeLabels| {
        policy.nodes.iter().any(|(other, l)| {
            other != node
                && target.site.accepts(&labels.site, &l.site)
                && target.media.accepts(&labels.media, &l.media)
        })
    };
    // With an unknown site or media every node would look stranded; that is reported already.
    let stranded: Vec<&str> = if labels_known {
        sources
            .iter()
            .filter(|(n, l)| !receivers(n, l))
            .map(|(n, _)| n.as_str())
            .collect()
    } else {
        Vec::new()
    };
    let want = format!("site {}, media {}", target.site, target.media);
    if !stranded.is_empty() && stranded.len() == sources.len() {
        out.push(problem(
            &["target"],
            format!("no other node matches the target ({want}) for any source node"),
        ));
    } else if task.source.nodes.is_some() && !stranded.is_empty() {
        out.push(problem(
            &["source", "nodes"],
            format!(
                "no other node matches the target ({want}) for {}",
                stranded.join(", ")
            ),
        ));
    }
    let template = match (&target.pool, &target.root) {
        (Some(_), Some(_)) => {
            out.push(problem(
                &["target"],
                "give either `pool` or `root`, not both".into(),
            ));
            return;
        }
        (None, None) => {
            out.push(problem(
                &["target"],
                "missing `root` (or `pool`): where on the target replicas land".into(),
            ));
            return;
        }
        (Some(pool), None) if pool.contains('/') => {
            out.push(problem(
                &["target", "pool"],
                format!("{pool:?} is a dataset, not a pool; write `root: {pool}` instead"),
            ));
            return;
        }
        _ => target
            .root_template()
            .expect("exactly one of pool and root"),
    };
    let key = if target.pool.is_some() {
        "pool"
    } else {
        "root"
    };
    if let Err(e) = expand_root(&template, "node", "site") {
        out.push(problem(&["target", key], e));
        return;
    }
    if !template.contains("{node}") && sources.len() > 1 {
        out.push(problem(
            &["target", key],
            format!("replicas from several nodes would land in the same datasets under {template:?}; add `{{node}}` to it"),
        ));
    }
    for (node, labels) in &sources {
        let root = expand_root(&template, node, &labels.site)
            .and_then(|r| DatasetName::parse(&r).map_err(|e| e.to_string()));
        let root = match root {
            Ok(root) => root,
            Err(e) => {
                out.push(problem(
                    &["target", key],
                    format!("replicas cannot land there: {e}"),
                ));
                return;
            }
        };
        if let Some((class, _)) = policy.class_for(&root, None) {
            out.push(problem(
                &["target", key],
                format!(
                    "replicas under {root} would match the policy's dataset rules (class {class:?}) and get snapshots of their own, which breaks the next receive; choose another root, or exclude them in the policy with a rule `match: {}/**` and `exclude: true` before the others",
                    template.replace("{node}", "*").replace("{site}", "*")
                ),
            ));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_expand_known_placeholders_only() {
        assert_eq!(
            expand_root("backup/{node}", "n1", "fra1").unwrap(),
            "backup/n1"
        );
        assert_eq!(
            expand_root("b/{site}/{node}/x", "n1", "fra1").unwrap(),
            "b/fra1/n1/x"
        );
        assert!(expand_root("b/{host}", "n1", "s")
            .unwrap_err()
            .contains("{host}"));
        assert!(expand_root("b/{node", "n1", "s").is_err());
        assert!(expand_root("b/node}", "n1", "s").is_err());
    }
}
