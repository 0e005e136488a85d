//! `zdr plan`: what the coordinator will do next and why, a pure function of
//! `GET /api/v1/plan`. The reasons come typed and are rendered here, by
//! `Why::describe`.

use zdr_coordinator::plan::{Plan, When};

use crate::render::{short, table, when};

fn when_cell(w: &When, now: i64) -> String {
    match w {
        When::Now => "now".into(),
        When::Blocked => "BLOCKED".into(),
        When::Waiting => "waiting".into(),
        When::At { at } if *at <= now => format!("{} (due)", when(*at)),
        When::At { at } => format!("{} (in {})", when(*at), short(at - now)),
    }
}

/// `zdr plan`.
pub fn render_plan(p: &Plan) -> String {
    let now = p.generated_at;
    let count = |f: fn(&When) -> bool| p.items.iter().filter(|i| f(&i.when)).count();
    let mut out = format!(
        "plan at {}: {} now, {} blocked, {} waiting, {} later\n",
        when(now),
        count(|w| *w == When::Now),
        count(|w| *w == When::Blocked),
        count(|w| *w == When::Waiting),
        count(|w| matches!(w, When::At { .. })),
    );
    if p.items.is_empty() {
        out.push_str("nothing planned: no pairing, bucket task, drill or protected dataset\n");
        return out;
    }
    let rows: Vec<Vec<String>> = p
        .items
        .iter()
        .map(|i| {
            vec![
                when_cell(&i.when, now),
                i.what.describe(),
                i.why.describe(now),
            ]
        })
        .collect();
    out.push_str(&table(&["WHEN", "WHAT", "WHY"], &rows));
    if p.left_out > 0 {
        out.push_str(&format!(
            "{} more not shown (the latest); raise the limit: GET /api/v1/plan?limit=N\n",
            p.left_out
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::decode;

    /// The API's answer for a small fleet: one item of each kind of reason.
    const PLAN: &str = include_str!("testdata/plan.json");
    const GOLDEN: &str = include_str!("testdata/plan.txt");

    #[test]
    fn text_matches_the_golden_file() {
        let p: Plan = decode("u", PLAN).unwrap();
        let out = render_plan(&p);
        if out != GOLDEN {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/bin/zdr/testdata/plan.txt.new"
            );
            std::fs::write(path, &out).unwrap();
            panic!("the text differs from testdata/plan.txt; see {path}:\n{out}");
        }
    }

    /// `--json` prints the API's answer as is: the fixture is exactly what
    /// the coordinator serializes, no field missing or left over.
    #[test]
    fn the_json_fixture_is_the_api_shape() {
        let p: Plan = decode("u", PLAN).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(PLAN).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap(), fixture);
    }

    #[test]
    fn an_empty_plan_says_why() {
        let p: Plan = decode("u", r#"{"generated_at":0,"items":[],"left_out":0}"#).unwrap();
        assert!(render_plan(&p)
            .ends_with("nothing planned: no pairing, bucket task, drill or protected dataset\n"));
    }
}
