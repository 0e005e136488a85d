//! Replication tasks: the model's defaults, and every kind of error with the
//! exact file:line:column and message.

use zdr_common::policy::Policy;
use zdr_schemas::tasks::{Compress, MediaChoice, SiteChoice};
use zdr_schemas::{parse_policy, parse_tasks, Rate, Tasks};

const POLICY: &str = "\
version: 1
sites: { a: {}, b: {} }
nodes:
  a1: { site: a, media: ssd }
  a2: { site: a, media: hdd }
  b1: { site: b, media: hdd }
classes:
  gold: { rpo: 1h, rto: 1h }
datasets:
  - { match: backup/**, exclude: true }
  - { match: tank/**, class: gold }
";

/// Line numbers in the assertions refer to this text.
const BASE: &str = r#"version: 1
tasks:
  - name: local
    source:
      class: gold
    target:
      site: same
      media: different
      root: backup/{node}
    schedule:
      every: 15m
  - name: offsite
    source:
      match: tank/db/**
      nodes: [a1, a2]
    target:
      site: other
      root: backup/{node}
    schedule:
      every: 1h
      window: "22:00-06:00"
    bandwidth:
      limit: 50MB/s
      windows:
        - { from: "08:00", to: "18:00", limit: 20MB/s }
"#;

fn policy() -> Policy {
    parse_policy("p.yaml", POLICY).unwrap()
}

fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

fn error(text: &str) -> String {
    match parse_tasks("specs/t.yml", text, &policy()) {
        Ok(t) => panic!("accepted: {t:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn base_parses_with_defaults() {
    let tasks = parse_tasks("specs/t.yml", BASE, &policy()).unwrap();
    let local = &tasks.tasks[0];
    assert!(local.keep_intermediates && local.raw && !local.allow_rollback);
    assert_eq!(local.compress, Compress::Zstd);
    assert_eq!(local.bandwidth.limit, Rate::UNLIMITED);
    assert_eq!(local.target.site, SiteChoice::Same);
    assert_eq!(local.target.media, MediaChoice::Different);
    let offsite = &tasks.tasks[1];
    assert_eq!(offsite.source.patterns, ["tank/db/**"]);
    assert_eq!(offsite.target.media, MediaChoice::Any);
    assert_eq!(
        offsite.target.root_template().as_deref(),
        Some("backup/{node}")
    );
    assert_eq!(offsite.schedule.window.unwrap().to_string(), "22:00-06:00");
    assert_eq!(offsite.bandwidth.limit.bytes_per_sec(), Some(50_000_000));
    assert_eq!(
        offsite.bandwidth.windows[0].limit.bytes_per_sec(),
        Some(20_000_000)
    );
}

#[test]
fn bad_rate() {
    assert_eq!(
        error(&edit("limit: 50MB/s", "limit: 50MBs")),
        "specs/t.yml:23:14: tasks[1].bandwidth.limit: \"50MBs\" is not a rate; write a number and a unit per second (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 50MB/s, 1.5GB/s or 500KiB/s, or `unlimited`"
    );
}

#[test]
fn overlapping_and_empty_windows() {
    let overlap = edit(
        "limit: 20MB/s }\n",
        "limit: 20MB/s }\n        - { from: \"17:00\", to: \"19:00\", limit: 30MB/s }\n",
    );
    assert_eq!(
        error(&overlap),
        "specs/t.yml:26:11: tasks[1].bandwidth.windows[1]: window 17:00-19:00 overlaps windows[0] (08:00-18:00); only one limit can apply at a time, so split or shorten one"
    );
    assert_eq!(
        error(&edit("to: \"18:00\"", "to: \"08:00\"")),
        "specs/t.yml:25:11: tasks[1].bandwidth.windows[0]: window 08:00-08:00 is empty (it starts where it ends); use 00:00-24:00 for all day"
    );
    assert_eq!(
        error(&edit("window: \"22:00-06:00\"", "window: \"22:00-6:00\"")),
        "specs/t.yml:21:15: tasks[1].schedule.window: \"6:00\" is not a time of day; write HH:MM in UTC, from 00:00 to 24:00"
    );
}

#[test]
fn unknown_keys_and_values() {
    assert_eq!(
        error(&edit("    bandwidth:", "    bandwith:")),
        "specs/t.yml:22:5: tasks[1]: unknown key `bandwith`; did you mean `bandwidth`?"
    );
    assert_eq!(
        error(&edit(
            "      every: 15m\n",
            "      every: 15m\n    compress: zstdd\n"
        )),
        "specs/t.yml:12:15: tasks[0].compress: unknown value `zstdd`; did you mean `zstd`?"
    );
    assert_eq!(
        error(&edit(
            "      root: backup/{node}\n    schedule:\n      every: 15m",
            "      roots: backup/{node}\n    schedule:\n      every: 15m"
        )),
        "specs/t.yml:9:7: tasks[0].target: unknown key `roots`; did you mean `root`?"
    );
}

#[test]
fn references_must_exist_in_the_policy() {
    assert_eq!(
        error(&edit("class: gold", "class: glod")),
        "specs/t.yml:5:14: tasks[0].source.class: \"glod\" is not a class in the policy; did you mean `gold`?"
    );
    assert_eq!(
        error(&edit("nodes: [a1, a2]", "nodes: [a1, x9]")),
        "specs/t.yml:15:19: tasks[1].source.nodes[1]: \"x9\" is not a node in the policy; known: `a1`, `a2`, `b1`"
    );
    assert_eq!(
        error(&edit("site: other", "site: c")),
        "specs/t.yml:17:13: tasks[1].target.site: \"c\" is not a site in the policy; known: `a`, `b`"
    );
    assert_eq!(
        error(&edit("media: different", "media: tape")),
        "specs/t.yml:8:14: tasks[0].target.media: no node in the policy has media \"tape\"; media in use: `hdd`, `ssd`"
    );
}

#[test]
fn names_are_unique_and_tidy() {
    assert_eq!(
        error(&edit("name: offsite", "name: local")),
        "specs/t.yml:12:11: tasks[1].name: task name \"local\" is already used by tasks[0]; names must be unique"
    );
    assert_eq!(
        error(&edit("name: local", "name: my task")),
        "specs/t.yml:3:11: tasks[0].name: task name \"my task\" contains ' '; use only ASCII letters, digits, '-', '_' and '.'"
    );
}

#[test]
fn schedule_and_source_checks() {
    assert_eq!(
        error(&edit("every: 15m", "every: 0s")),
        "specs/t.yml:11:14: tasks[0].schedule.every: must be at least 1s"
    );
    assert_eq!(
        error(&edit(
            "    source:\n      class: gold\n",
            "    source: {}\n"
        )),
        "specs/t.yml:4:5: tasks[0].source: select datasets with `class`, `match` or both"
    );
    assert_eq!(
        error(&edit("match: tank/db/**", "match: tank//db")),
        "specs/t.yml:14:14: tasks[1].source.match[0]: pattern \"tank//db\" has an empty component"
    );
}

#[test]
fn targets_must_be_reachable_and_safe() {
    assert_eq!(
        error(&edit("media: different", "media: same")),
        "specs/t.yml:6:5: tasks[0].target: no other node matches the target (site same, media same) for any source node"
    );
    assert_eq!(
        error(&edit("      site: other\n", "      site: other\n      media: ssd\n").replace("[a1, a2]", "[a1, b1]")),
        "specs/t.yml:15:7: tasks[1].source.nodes: no other node matches the target (site other, media ssd) for a1"
    );
    assert_eq!(
        error(&edit("root: backup/{node}", "root: tank/replicas/{node}")),
        "specs/t.yml:9:13: tasks[0].target.root: replicas under tank/replicas/a1 would match the policy's dataset rules (class \"gold\") and get snapshots of their own, which breaks the next receive; choose another root, or exclude them in the policy with a rule `match: tank/replicas/*/**` and `exclude: true` before the others"
    );
    assert_eq!(
        error(&edit("root: backup/{node}", "root: backup/all")),
        "specs/t.yml:9:13: tasks[0].target.root: replicas from several nodes would land in the same datasets under \"backup/all\"; add `{node}` to it"
    );
    assert_eq!(
        error(&edit("root: backup/{node}", "root: backup/{host}")),
        "specs/t.yml:9:13: tasks[0].target.root: root \"backup/{host}\" uses `{host}`; only `{node}` and `{site}` can be filled in"
    );
    assert_eq!(
        error(&edit(
            "      root: backup/{node}\n",
            "      root: backup/{node}\n      pool: backup\n"
        )),
        "specs/t.yml:6:5: tasks[0].target: give either `pool` or `root`, not both"
    );
    assert_eq!(
        error(&edit("      root: backup/{node}\n", "      pool: backup/x\n")),
        "specs/t.yml:9:13: tasks[0].target.pool: \"backup/x\" is a dataset, not a pool; write `root: backup/x` instead"
    );
    assert_eq!(
        error(&edit("root: backup/{node}", "root: backup/{node}/$x")),
        "specs/t.yml:9:13: tasks[0].target.root: replicas cannot land there: name \"backup/a1/$x\" contains '$' at byte 10; ZFS names allow only ASCII letters, digits, space and - _ . :"
    );
    let pool = parse_tasks(
        "t.yml",
        &edit("root: backup/{node}", "pool: backup"),
        &policy(),
    )
    .unwrap();
    assert_eq!(
        pool.tasks[0].target.root_template().as_deref(),
        Some("backup/{node}")
    );
}

#[test]
fn retention_override_is_checked() {
    let text = edit(
        "      every: 15m\n",
        "      every: 15m\n    retention:\n      tiers: { hourly: 24, daily: 0 }\n",
    );
    assert_eq!(
        error(&text),
        "specs/t.yml:13:35: tasks[0].retention.tiers.daily: keeps 0 daily snapshots; keep at least 1 or remove the tier"
    );
}

#[test]
fn a_bare_list_gets_a_hint() {
    assert_eq!(
        error("- name: local\n"),
        "specs/t.yml:1:1: the top level is a list; expected a mapping with the keys `version`, `tasks` (the list of tasks goes under `tasks:`) and, optionally, `links` and `buckets`"
    );
}

/// Appended to BASE, so it starts on line 26.
const LINKS: &str = r#"links:
  - between: [a, b]
    limit: 100MB/s
    windows:
      - { from: "22:00", to: "06:00", limit: unlimited }
      - { from: "08:00", to: "18:00", limit: 20MB/s }
"#;

fn with_links(edits: &[(&str, &str)]) -> String {
    let mut links = LINKS.to_string();
    for (from, to) in edits {
        assert!(links.contains(from), "{from:?} is not in LINKS");
        links = links.replacen(from, to, 1);
    }
    format!("{BASE}{links}")
}

#[test]
fn links_parse_and_give_the_limit_in_force() {
    let tasks = parse_tasks("t.yml", &format!("{BASE}{LINKS}"), &policy()).unwrap();
    let link = &tasks.links[0];
    assert!(link.joins("a", "b") && link.joins("b", "a") && !link.joins("a", "a"));
    assert_eq!(link.limit_at(9 * 60).bytes_per_sec(), Some(20_000_000));
    assert_eq!(link.limit_at(18 * 60).bytes_per_sec(), Some(100_000_000));
    assert_eq!(link.limit_at(23 * 60).bytes_per_sec(), None);
    assert_eq!(link.limit_at(5 * 60 + 59).bytes_per_sec(), None);
    let offsite = &tasks.tasks[1].bandwidth;
    assert_eq!(offsite.limit_at(12 * 60).bytes_per_sec(), Some(20_000_000));
    assert_eq!(offsite.limit_at(7 * 60).bytes_per_sec(), Some(50_000_000));
    let none = parse_tasks("t.yml", BASE, &policy()).unwrap();
    assert!(none.links.is_empty());
}

#[test]
fn link_sites_must_exist_differ_and_pair_once() {
    assert_eq!(
        error(&with_links(&[("[a, b]", "[a, c]")])),
        "specs/t.yml:27:18: links[0].between[1]: \"c\" is not a site in the policy; known: `a`, `b`"
    );
    assert_eq!(
        error(&with_links(&[("[a, b]", "[a, a]")])),
        "specs/t.yml:27:18: links[0].between[1]: names \"a\" twice; a link joins two different sites (transfers within a site have no link budget)"
    );
    assert_eq!(
        error(&with_links(&[("[a, b]", "[a, b, c]")])),
        "specs/t.yml:27:5: links[0].between: lists 3 sites; a link is between exactly two\n\
         specs/t.yml:27:21: links[0].between[2]: \"c\" is not a site in the policy; known: `a`, `b`"
    );
    assert_eq!(
        error(&format!(
            "{BASE}{LINKS}  - {{ between: [b, a], limit: 1MB/s }}\n"
        )),
        "specs/t.yml:32:7: links[1].between: b and a already have a budget in links[0]; both directions share one, so give each pair once"
    );
}

#[test]
fn link_budgets_are_checked_together() {
    assert_eq!(
        error(&with_links(&[("limit: 100MB/s", "limiit: 100MB/s")])),
        "specs/t.yml:28:5: links[0]: unknown key `limiit`; did you mean `limit`?"
    );
    assert_eq!(
        error(&with_links(&[("limit: 20MB/s", "limit: 0B/s")])),
        "specs/t.yml:31:46: links[0].windows[1].limit: \"0B/s\" is less than 1 byte per second; use at least 1B/s, or `unlimited`"
    );
    let text = with_links(&[
        ("[a, b]", "[b, b]"),
        ("\"22:00\", to: \"06:00\"", "\"17:00\", to: \"07:00\""),
    ]);
    assert_eq!(
        error(&text),
        "specs/t.yml:27:18: links[0].between[1]: names \"b\" twice; a link joins two different sites (transfers within a site have no link budget)\n\
         specs/t.yml:31:9: links[0].windows[1]: window 08:00-18:00 overlaps windows[0] (17:00-07:00); only one limit can apply at a time, so split or shorten one"
    );
    assert_eq!(
        error(&format!("{BASE}links:\n  - between: [a, b]\n")),
        "specs/t.yml:27:5: links[0].limit: the link is unlimited at all times; give a `limit` or `windows`, or remove the link"
    );
}

#[test]
fn json_round_trip() {
    let tasks = parse_tasks("t.yml", &format!("{BASE}{LINKS}"), &policy()).unwrap();
    let json = serde_json::to_string(&tasks).unwrap();
    assert_eq!(serde_json::from_str::<Tasks>(&json).unwrap(), tasks);
    // JSON is YAML too: the loader reads it back the same.
    assert_eq!(parse_tasks("t.json", &json, &policy()).unwrap(), tasks);
}

/// A bucket task beside the replication tasks; line numbers in the bucket
/// assertions refer to this text.
fn with_bucket(from: &str, to: &str) -> String {
    let bucket = r#"buckets:
  - name: vault
    source: { class: gold }
    bucket:
      endpoint: https://s3.example.net
      bucket: zdr-vault
      region: eu-1
      credentials: { file: /etc/zdr/vault.credentials }
      object_lock: { mode: compliance, retain: 30d }
    chain: { full_every: 30d, incremental_every: 1d }
    recipients: ["BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="]
"#;
    assert!(bucket.contains(from), "{from:?} is not in the bucket task");
    format!("{BASE}{}", bucket.replacen(from, to, 1))
}

#[test]
fn bucket_task_parses() {
    use zdr_schemas::buckets::LockMode;
    let tasks = parse_tasks("specs/t.yml", &with_bucket("", ""), &policy()).unwrap();
    let b = &tasks.buckets[0];
    assert_eq!(
        b.bucket.credentials.file.as_deref(),
        Some("/etc/zdr/vault.credentials")
    );
    assert_eq!(b.bucket.object_lock.unwrap().mode, LockMode::Compliance);
    assert_eq!(b.chain.full_every.secs(), 30 * 86_400);
    assert!(b.raw && !b.bucket.b2);
}

#[test]
fn bucket_secrets_are_never_inline() {
    let e = error(&with_bucket(
        "{ file: /etc/zdr/vault.credentials }",
        "{ access_key_id: AKIA1, secret_access_key: hunter2 }",
    ));
    assert!(
        e.starts_with("specs/t.yml:33:7: buckets[0].bucket.credentials"),
        "{e}"
    );
    assert!(
        e.contains("has `access_key_id`") && e.contains("must not hold the secret"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "the error repeats the secret: {e}");
    let e = error(&with_bucket(
        "{ file: /etc/zdr/vault.credentials }",
        "AKIA1:hunter2",
    ));
    assert!(
        e.starts_with("specs/t.yml:33:20: buckets[0].bucket.credentials"),
        "{e}"
    );
    assert!(
        e.contains("is a plain value") && !e.contains("hunter2"),
        "{e}"
    );
}

#[test]
fn bucket_problems_have_positions() {
    assert_eq!(
        error(&with_bucket("{ file: /etc/zdr/vault.credentials }", "{ file: vault.credentials }")),
        "specs/t.yml:33:28: buckets[0].bucket.credentials.file: \"vault.credentials\" is not an absolute path; the agent reads it on its own host, so write the full path"
    );
    assert_eq!(
        error(&with_bucket("mode: compliance", "mode: compliant")),
        "specs/t.yml:34:28: buckets[0].bucket.object_lock.mode: unknown value `compliant`; did you mean `compliance`?"
    );
    assert_eq!(
        error(&with_bucket("full_every: 30d", "full_every: 1d")),
        "specs/t.yml:35:26: buckets[0].chain.full_every: 1d is not longer than incremental_every (1d); a chain is a full and incrementals until the next full, so make full_every longer"
    );
    assert_eq!(
        error(&with_bucket("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=", "BwcH")),
        "specs/t.yml:36:18: buckets[0].recipients[0]: \"BwcH\" decodes to 3 bytes; a recovery public key (X25519) is 32"
    );
    assert_eq!(
        error(&with_bucket("name: vault", "name: local")),
        "specs/t.yml:27:11: buckets[0].name: task name \"local\" is already used by tasks[0]; names must be unique among tasks and buckets"
    );
    assert_eq!(
        error(&with_bucket("region: eu-1", "region: eu-1\n      b2: true\n      storage_class: GLACIER")),
        "specs/t.yml:34:22: buckets[0].bucket.storage_class: B2 has no storage classes; remove `storage_class` or set `b2: false`"
    );
}

#[test]
fn bucket_pruning_is_checked() {
    let prune = |p: &str| {
        with_bucket(
            "retain: 30d }",
            &format!("retain: 30d }}\n      prune: {{ {p} }}"),
        )
    };
    let ok = parse_tasks(
        "specs/t.yml",
        &prune("credentials: { env: ZDR_PRUNE }"),
        &policy(),
    )
    .unwrap();
    let b = &ok.buckets[0].bucket;
    // The lock's retention when the prune gives none; hourly by default.
    assert_eq!(b.prune_retain().unwrap().secs(), 30 * 86_400);
    assert_eq!(b.prune.as_ref().unwrap().every.secs(), 3_600);
    assert_eq!(
        error(&prune("credentials: { env: ZDR_PRUNE }, retain: 7d")),
        "specs/t.yml:35:57: buckets[0].bucket.prune.retain: 1w is shorter than object_lock.retain (4w2d): the server would refuse to delete chains still locked; make it at least 4w2d"
    );
    let e = error(&prune("credentials: { file: /etc/zdr/vault.credentials }"));
    assert!(
        e.starts_with(
            "specs/t.yml:35:16: buckets[0].bucket.prune.credentials: names the agents' credentials"
        ),
        "{e}"
    );
    let e = error(&prune("credentials: { file: prune.credentials }"));
    assert!(
        e.contains("bucket.prune.credentials.file: \"prune.credentials\" is not an absolute path; the coordinator reads it"),
        "{e}"
    );
    // Without a lock, how long to keep chains must be said.
    let unlocked = with_bucket(
        "      object_lock: { mode: compliance, retain: 30d }\n",
        "      prune: { credentials: { env: ZDR_PRUNE } }\n",
    );
    let e = error(&unlocked);
    assert!(
        e.starts_with("specs/t.yml:34:7: buckets[0].bucket.prune: has no `retain`"),
        "{e}"
    );
}
