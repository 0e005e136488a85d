//! Every kind of policy error, with the exact file:line:column and message an
//! admin sees.

use zdr_schemas::{load_policy, parse_policy, SpecError};

/// Line numbers in the assertions refer to this text.
const BASE: &str = "\
version: 1
sites:
  a: {}
  b: {}
nodes:
  n1: { site: a, media: ssd }
  n2: { site: b, media: hdd }
classes:
  gold:
    tiers:
      hourly: 24
    rpo: 1h
    rto: 1h
datasets:
  - match: tank/**
    class: gold
";

fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

fn error(text: &str) -> String {
    match parse_policy("specs/p.yaml", text) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn base_is_valid() {
    let p = parse_policy("specs/p.yaml", BASE).unwrap();
    assert_eq!(p.classes["gold"].rpo.secs(), 3600);
}

#[test]
fn yaml_syntax_error_is_located() {
    assert_eq!(
        error("version: 1\nsites: [a, b\nnodes: {}\n"),
        "specs/p.yaml:3:6: YAML syntax error: illegal placement of ':' indicator"
    );
}

#[test]
fn tab_indentation_points_at_the_tab() {
    assert_eq!(
        error("version: 1\nsites:\n\ta: {}\n"),
        "specs/p.yaml:3:1: tab character in the indentation; YAML indents with spaces only"
    );
    assert_eq!(
        error(&edit("    rpo: 1h\n", "  \trpo: 1h\n")),
        "specs/p.yaml:12:3: tab character in the indentation; YAML indents with spaces only"
    );
}

#[test]
fn misspelt_tier_suggests_the_named_one() {
    assert_eq!(
        error(&edit("hourly: 24", "hourlyy: 24")),
        "specs/p.yaml:11:7: classes.gold.tiers: \"hourlyy\" is not a tier; use hourly, daily, weekly or a duration such as 15m or 4h; did you mean `hourly`?"
    );
}

#[test]
fn unknown_key_suggests_the_nearest_or_lists_all() {
    assert_eq!(
        error(&edit("    rpo: 1h", "    rpoo: 1h")),
        "specs/p.yaml:12:5: classes.gold: unknown key `rpoo`; did you mean `rpo`?"
    );
    assert_eq!(
        error(&edit("    rto: 1h\n", "    rto: 1h\n    colour: red\n")),
        "specs/p.yaml:14:5: classes.gold: unknown key `colour`; valid keys here: `tiers`, `rpo`, `rto`, `immutable_for`, `copies`, `drill`"
    );
    assert_eq!(
        error(&edit("version: 1\n", "version: 1\nsnapshot_prefx: x\n")),
        "specs/p.yaml:2:1: unknown key `snapshot_prefx`; did you mean `snapshot_prefix`?"
    );
}

#[test]
fn type_errors_point_at_the_value() {
    assert_eq!(
        error(&edit("hourly: 24", "hourly: lots")),
        "specs/p.yaml:11:15: classes.gold.tiers.hourly: expected a whole number from 0 to 4294967295, found string \"lots\""
    );
    assert_eq!(
        error(&edit("rpo: 1h", "rpo: 1 hour")),
        "specs/p.yaml:12:10: classes.gold.rpo: \"1 hour\" is not a duration; write a number and a unit (s, m, h, d, w), such as 30s, 15m, 1h, 1d or 1h30m"
    );
    assert_eq!(
        error(&edit(
            "  - match: tank/**\n    class: gold\n",
            "  match: tank/**\n"
        )),
        "specs/p.yaml:14:1: datasets: expected a list, found a mapping"
    );
}

#[test]
fn missing_key_points_at_its_parent() {
    assert_eq!(
        error(&edit("    rto: 1h\n", "")),
        "specs/p.yaml:9:3: classes.gold: missing required key `rto`"
    );
    assert_eq!(
        error(&edit("version: 1\n", "")),
        "specs/p.yaml:1:1: missing required key `version`"
    );
}

#[test]
fn zero_keep_points_at_the_count() {
    assert_eq!(
        error(&edit("hourly: 24", "hourly: 0")),
        "specs/p.yaml:11:15: classes.gold.tiers.hourly: keeps 0 hourly snapshots; keep at least 1 or remove the tier"
    );
    // The problem names the tier `hourly`; the file says `1h`.
    assert_eq!(
        error(&edit("hourly: 24", "1h: 0")),
        "specs/p.yaml:11:11: classes.gold.tiers.1h: keeps 0 hourly snapshots; keep at least 1 or remove the tier"
    );
}

#[test]
fn rpo_shorter_than_the_interval() {
    assert_eq!(
        error(&edit("rpo: 1h", "rpo: 30m")),
        "specs/p.yaml:12:10: classes.gold.rpo: RPO 30m is shorter than the snapshot interval 1h; no schedule can meet it (add a tier of 30m or less)"
    );
}

#[test]
fn drill_block_defaults_and_bad_values() {
    let p = parse_policy("specs/p.yaml", BASE).unwrap();
    let d = p.classes["gold"].drill;
    assert_eq!((d.every.secs(), d.sample), (90 * 86_400, 1), "the defaults");
    let text = edit(
        "    rto: 1h\n",
        "    rto: 1h\n    drill: { every: 30d, sample: 4 }\n",
    );
    let d = parse_policy("specs/p.yaml", &text).unwrap().classes["gold"].drill;
    assert_eq!((d.every.secs(), d.sample), (30 * 86_400, 4));
    assert_eq!(
        error(&edit(
            "    rto: 1h\n",
            "    rto: 1h\n    drill:\n      every: 0s\n      sample: 0\n"
        )),
        "specs/p.yaml:15:14: classes.gold.drill.every: a drill every 0s cannot be scheduled; give a duration such as 90d\n\
         specs/p.yaml:16:15: classes.gold.drill.sample: a sample of 0 drills nothing; restore at least 1 dataset per drill"
    );
    assert_eq!(
        error(&edit("    rto: 1h\n", "    rto: 1h\n    drill: { every: soon }\n")),
        "specs/p.yaml:14:21: classes.gold.drill.every: \"soon\" is not a duration; write a number and a unit (s, m, h, d, w), such as 30s, 15m, 1h, 1d or 1h30m"
    );
}

#[test]
fn unknown_class_in_a_dataset_rule() {
    assert_eq!(
        error(&edit("    class: gold", "    class: silver")),
        "specs/p.yaml:16:12: datasets[0].class: class \"silver\" is not defined under `classes` (defined: gold)"
    );
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = edit("    class: gold", "    class: silver")
        .replace("hourly: 24", "hourly: 0")
        .replace("rto: 1h", "rto: 0s");
    assert_eq!(
        error(&text),
        "specs/p.yaml:11:15: classes.gold.tiers.hourly: keeps 0 hourly snapshots; keep at least 1 or remove the tier\n\
         specs/p.yaml:13:10: classes.gold.rto: RTO must be more than 0\n\
         specs/p.yaml:16:12: datasets[0].class: class \"silver\" is not defined under `classes` (defined: gold)"
    );
    let err = parse_policy("specs/p.yaml", &text).unwrap_err();
    assert_eq!(err.diagnostics().len(), 3);
    assert_eq!(err.diagnostics()[1].path, "classes.gold.rto");
}

#[test]
fn a_defaulted_key_points_at_the_nearest_written_ancestor() {
    // One site, and the default copies ask for one offsite copy.
    let text = edit("  b: {}\n", "").replace("site: b", "site: a");
    assert_eq!(
        error(&text),
        "specs/p.yaml:8:3: classes.gold.copies.offsite: an offsite copy needs at least two sites under `sites`"
    );
}

#[test]
fn empty_and_wrongly_shaped_files() {
    let expected = "a mapping with the keys `version`, `sites`, `nodes`, `classes` and `datasets`";
    for empty in ["", "\n\n", "# nothing yet\n", "---\n"] {
        assert_eq!(
            error(empty),
            format!("specs/p.yaml:1:1: the file is empty; expected {expected}")
        );
    }
    assert_eq!(
        error("# a list\n- version: 1\n"),
        format!("specs/p.yaml:2:1: the top level is a list; expected {expected}")
    );
    assert_eq!(
        error("version 1\n"),
        format!("specs/p.yaml:1:1: the top level is a single value; expected {expected}")
    );
    assert_eq!(
        error(&format!("{BASE}---\nversion: 1\n")),
        "specs/p.yaml:17:1: a second YAML document starts here; keep the whole file in one document (remove the `---`)"
    );
}

#[test]
fn duplicate_keys_are_refused_with_both_locations() {
    let text = edit("    rto: 1h\n", "    rto: 1h\n    rpo: 2h\n")
        .replace("  b: {}\n", "  b: {}\n  a: {}\n");
    assert_eq!(
        error(&text),
        "specs/p.yaml:5:3: sites: duplicate key `a` (first at line 3, column 3); YAML would keep only one, so remove or merge them\n\
         specs/p.yaml:15:5: classes.gold: duplicate key `rpo` (first at line 13, column 5); YAML would keep only one, so remove or merge them"
    );
    assert_eq!(
        error(&edit("      hourly: 24\n", "      hourly: 24\n      1h: 12\n")),
        "specs/p.yaml:12:7: classes.gold.tiers: tier `1h` is the same period as `hourly` (line 11, column 7); keep one of them"
    );
}

#[test]
fn anchors_and_aliases_work() {
    let text = edit("    tiers:\n", "    tiers: &t\n").replacen(
        "    rto: 1h\n",
        "    rto: 1h\n  silver:\n    tiers: *t\n    rpo: 1h\n    rto: 4h\n",
        1,
    );
    let p = parse_policy("specs/p.yaml", &text).unwrap();
    assert_eq!(p.classes["silver"].tiers, p.classes["gold"].tiers);
    assert_eq!(p.classes["silver"].rto.secs(), 4 * 3600);
}

#[test]
fn unreadable_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.yaml");
    let err = load_policy(&path).unwrap_err();
    assert!(matches!(err, SpecError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", path.display())),
        "{err}"
    );
}

#[test]
fn load_uses_the_path_as_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.yaml");
    std::fs::write(&path, edit("hourly: 24", "hourly: 0")).unwrap();
    let err = load_policy(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:11:15: ", path.display())),
        "{err}"
    );
}

#[test]
fn a_shadowed_rule_is_a_located_warning_not_an_error() {
    let text = format!("{BASE}  - match: tank/db\n    class: gold\n");
    let p = parse_policy("specs/p.yaml", &text).unwrap();
    let w: Vec<String> = zdr_schemas::policy_warnings("specs/p.yaml", &text, &p)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        w,
        [
            "specs/p.yaml:17:12: datasets[1].match: this rule never applies: rule 0 \
          (match \"tank/**\") matches every dataset \"tank/db\" matches and gives them class \
          \"gold\" first (the first matching rule wins); move this rule above it or remove it"
        ]
    );
    assert!(zdr_schemas::policy_warnings(
        "specs/p.yaml",
        BASE,
        &parse_policy("specs/p.yaml", BASE).unwrap()
    )
    .is_empty());
}
