//! Pairing: for every replication task and every dataset it selects, choose a
//! target node by site and media labels, free capacity and current load. A
//! pairing is stable once made; it moves only when its target is gone from the
//! fleet or full, and the reason is recorded.
//!
//! Capacity is per target pool (the first component of the target dataset),
//! never summed across a node's pools. Within one plan every pairing reserves
//! its bytes (with `HEADROOM`) in its target pool, kept pairings first, so
//! many datasets that each fit cannot together over-commit one pool. This
//! counts a replica that has already landed twice (it is in the pool's used
//! space and reserved again): pairing errs towards refusing a target. A node
//! that reports no pool of that name cannot be judged on room: it stays a
//! candidate, ranked after those with room, and a receive there fails with an
//! error naming the pool.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use zdr_common::policy::Pattern;
use zdr_common::DatasetName;
use zdr_schemas::tasks::{expand_root, Task};

/// A target keeps this much room beyond the dataset's size, or it counts as full.
pub const HEADROOM: f64 = 1.2;

/// What the planner needs to know about a node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    pub site: String,
    pub media: String,
    /// Free bytes of each pool, by pool name.
    pub pools: BTreeMap<String, u64>,
}

/// A dataset a node holds, with the class the agent resolved.
#[derive(Debug, Clone)]
pub struct SourceDataset {
    pub node: String,
    pub dataset: DatasetName,
    pub class: Option<String>,
    pub used: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pairing {
    pub task: String,
    pub source_node: String,
    pub dataset: String,
    pub target_node: String,
    pub target_dataset: String,
    /// Why this target: chosen first, or why it moved.
    pub reason: String,
}

impl Pairing {
    pub fn key(&self) -> (String, String, String) {
        (
            self.task.clone(),
            self.source_node.clone(),
            self.dataset.clone(),
        )
    }
}

/// A selected dataset that has no possible target right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unpaired {
    pub task: String,
    pub source_node: String,
    pub dataset: String,
    pub why: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub pairings: Vec<Pairing>,
    pub unpaired: Vec<Unpaired>,
}

/// `patterns`: the task's source patterns, parsed once per plan.
fn selects(task: &Task, patterns: &[Pattern], ds: &SourceDataset) -> bool {
    if let Some(nodes) = &task.source.nodes {
        if !nodes.contains(&ds.node) {
            return false;
        }
    }
    if let Some(class) = &task.source.class {
        if ds.class.as_deref() != Some(class.as_str()) {
            return false;
        }
    }
    task.source.patterns.is_empty() || patterns.iter().any(|p| p.matches(&ds.dataset))
}

/// Where a pairing's copy lands: its pool and dataset name, from the task's
/// root (or the source's own name without one).
fn target_of(task: &Task, src: &NodeFacts, ds: &DatasetName) -> Result<String, String> {
    let root = task
        .target
        .root_template()
        .map(|t| expand_root(&t, &src.name, &src.site))
        .transpose()?;
    Ok(match root {
        Some(root) => format!("{root}/{ds}"),
        None => ds.to_string(),
    })
}

fn pool_of(dataset: &str) -> &str {
    dataset.split('/').next().unwrap_or(dataset)
}

/// Bytes reserved so far in this plan, by node and pool.
#[derive(Default)]
struct Reserved<'a>(HashMap<&'a str, HashMap<String, u64>>);

impl<'a> Reserved<'a> {
    /// Free bytes left in `node`'s `pool` after what this plan reserved
    /// there; `None` when the node reports no such pool.
    fn room(&self, node: &'a NodeFacts, pool: &str) -> Option<u64> {
        let free = *node.pools.get(pool)?;
        let taken = self
            .0
            .get(node.name.as_str())
            .and_then(|pools| pools.get(pool))
            .copied()
            .unwrap_or(0);
        Some(free.saturating_sub(taken))
    }

    fn reserve(&mut self, node: &'a str, pool: &str, bytes: u64) {
        let pools = self.0.entry(node).or_default();
        match pools.get_mut(pool) {
            Some(b) => *b += bytes,
            None => {
                pools.insert(pool.to_string(), bytes);
            }
        }
    }
}

/// Pairs every dataset each task selects. `existing` holds the pairings made
/// before (from KV); `nodes` the nodes the fleet knows now.
pub fn plan(
    tasks: &[Task],
    nodes: &[NodeFacts],
    sources: &[SourceDataset],
    existing: &[Pairing],
) -> Plan {
    let by_name: BTreeMap<&str, &NodeFacts> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let previous: HashMap<(String, String, String), &Pairing> =
        existing.iter().map(|p| (p.key(), p)).collect();
    // Load counts what each target already receives, so new pairings spread out.
    let mut load: HashMap<&str, usize> = HashMap::new();
    let mut reserved = Reserved::default();
    let mut out = Plan::default();
    // Kept pairings first, so the load and reservations new ones see are accurate.
    let mut todo = Vec::new();
    for task in tasks {
        let patterns: Vec<Pattern> = task
            .source
            .patterns
            .iter()
            .filter_map(|p| Pattern::parse(p).ok())
            .collect();
        for ds in sources.iter().filter(|d| selects(task, &patterns, d)) {
            let Some(src) = by_name.get(ds.node.as_str()) else {
                continue;
            };
            let key = (task.name.clone(), ds.node.clone(), ds.dataset.to_string());
            let need = (ds.used as f64 * HEADROOM) as u64;
            match previous
                .get(&key)
                .map(|p| (p, by_name.get(p.target_node.as_str())))
            {
                Some((p, Some(t)))
                    if t.pools
                        .get(pool_of(&p.target_dataset))
                        .is_none_or(|free| *free >= need) =>
                {
                    *load.entry(t.name.as_str()).or_default() += 1;
                    reserved.reserve(&t.name, pool_of(&p.target_dataset), need);
                    out.pairings.push((*p).clone());
                }
                Some((p, Some(_))) => todo.push((
                    task,
                    ds,
                    src,
                    Some(format!("target {} is full", p.target_node)),
                )),
                Some((p, None)) => todo.push((
                    task,
                    ds,
                    src,
                    Some(format!("target {} left the fleet", p.target_node)),
                )),
                None => todo.push((task, ds, src, None)),
            }
        }
    }
    for (task, ds, src, moved) in todo {
        let need = (ds.used as f64 * HEADROOM) as u64;
        let unpaired = |why: String| Unpaired {
            task: task.name.clone(),
            source_node: ds.node.clone(),
            dataset: ds.dataset.to_string(),
            why,
        };
        let target_dataset = match target_of(task, src, &ds.dataset) {
            Ok(t) => t,
            Err(e) => {
                out.unpaired.push(unpaired(e));
                continue;
            }
        };
        let pool = pool_of(&target_dataset);
        let mut candidates: Vec<(&NodeFacts, Option<u64>)> = nodes
            .iter()
            .filter(|n| n.name != src.name)
            .filter(|n| task.target.site.accepts(&src.site, &n.site))
            .filter(|n| task.target.media.accepts(&src.media, &n.media))
            .map(|n| (n, reserved.room(n, pool)))
            .collect();
        if candidates.is_empty() {
            out.unpaired.push(unpaired(
                "no node matches the task's target site and media".into(),
            ));
            continue;
        }
        candidates.retain(|(_, room)| room.is_none_or(|r| r >= need));
        // Least loaded, then most room (an unknown pool last), then by name.
        let Some(&(target, _)) = candidates.iter().min_by(|(a, ra), (b, rb)| {
            let la = load.get(a.name.as_str()).copied().unwrap_or(0);
            let lb = load.get(b.name.as_str()).copied().unwrap_or(0);
            la.cmp(&lb)
                .then(rb.unwrap_or(0).cmp(&ra.unwrap_or(0)))
                .then(a.name.cmp(&b.name))
        }) else {
            out.unpaired.push(unpaired(format!(
                "every matching node has less than {need} bytes free in pool {pool}, after what this plan reserved there"
            )));
            continue;
        };
        *load.entry(target.name.as_str()).or_default() += 1;
        reserved.reserve(&target.name, pool, need);
        out.pairings.push(Pairing {
            task: task.name.clone(),
            source_node: ds.node.clone(),
            dataset: ds.dataset.to_string(),
            target_node: target.name.clone(),
            target_dataset,
            reason: match moved {
                Some(why) => format!("re-paired: {why}"),
                None => format!(
                    "site {} and media {} match; most room among the least loaded",
                    target.site, target.media
                ),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdr_schemas::tasks::Tasks;

    const POLICY: &str = r#"version: 1
sites: { a: {}, b: {} }
nodes:
  a1: { site: a, media: ssd }
  a2: { site: a, media: hdd }
  a3: { site: a, media: hdd }
  b1: { site: b, media: hdd }
  b2: { site: b, media: ssd }
classes:
  gold: { rpo: 1h, rto: 1h }
datasets:
  - { match: "tank/**", class: gold }
"#;

    const TASKS: &str = r#"version: 1
tasks:
  - name: local
    source: { class: gold }
    target: { site: same, media: different, root: "backup/{node}" }
    schedule: { every: 15m }
  - name: offsite
    source: { class: gold, nodes: [a1] }
    target: { site: other, media: hdd, root: "dr/{site}/{node}" }
    schedule: { every: 1h }
"#;

    fn tasks() -> Vec<Task> {
        let policy = zdr_schemas::parse_policy("p.yaml", POLICY).unwrap();
        let t: Tasks = zdr_schemas::parse_tasks("t.yml", TASKS, &policy).unwrap();
        t.tasks
    }

    /// A node whose pools `backup` and `dr` (the tasks' roots) each have `free` bytes.
    fn node(name: &str, site: &str, media: &str, free: u64) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            site: site.into(),
            media: media.into(),
            pools: [("backup".into(), free), ("dr".into(), free)].into(),
        }
    }

    fn set_free(n: &mut NodeFacts, free: u64) {
        for f in n.pools.values_mut() {
            *f = free;
        }
    }

    fn fleet() -> Vec<NodeFacts> {
        vec![
            node("a1", "a", "ssd", 1000),
            node("a2", "a", "hdd", 500),
            node("a3", "a", "hdd", 800),
            node("b1", "b", "hdd", 900),
            node("b2", "b", "ssd", 5000),
        ]
    }

    fn src(node: &str, ds: &str, used: u64) -> SourceDataset {
        SourceDataset {
            node: node.into(),
            dataset: DatasetName::parse(ds).unwrap(),
            class: Some("gold".into()),
            used,
        }
    }

    fn find<'a>(p: &'a Plan, task: &str, node: &str, ds: &str) -> &'a Pairing {
        p.pairings
            .iter()
            .find(|x| x.task == task && x.source_node == node && x.dataset == ds)
            .unwrap_or_else(|| panic!("no pairing for {task} {node} {ds}: {p:?}"))
    }

    #[test]
    fn pairs_by_site_media_room_and_load() {
        let sources = vec![src("a1", "tank/db", 100), src("a1", "tank/home", 100)];
        let p = plan(&tasks(), &fleet(), &sources, &[]);
        // Local copies go to the hdd nodes of site a; the second one to the other
        // hdd node, since the first already has one.
        let t1 = find(&p, "local", "a1", "tank/db");
        let t2 = find(&p, "local", "a1", "tank/home");
        assert_eq!(t1.target_node, "a3", "most room first");
        assert_eq!(t2.target_node, "a2", "then the less loaded");
        assert_eq!(t1.target_dataset, "backup/a1/tank/db");
        // Offsite: only hdd at another site.
        let o = find(&p, "offsite", "a1", "tank/db");
        assert_eq!(o.target_node, "b1");
        assert_eq!(o.target_dataset, "dr/a/a1/tank/db");
        assert!(p.unpaired.is_empty(), "{:?}", p.unpaired);
    }

    #[test]
    fn pairings_are_stable_and_move_only_when_the_target_is_gone_or_full() {
        let sources = vec![src("a1", "tank/db", 100)];
        let first = plan(&tasks(), &fleet(), &sources, &[]);
        assert_eq!(find(&first, "local", "a1", "tank/db").target_node, "a3");
        // a2 now has more room, but the pairing stays.
        let mut nodes = fleet();
        set_free(&mut nodes[1], 10_000);
        let again = plan(&tasks(), &nodes, &sources, &first.pairings);
        assert_eq!(
            find(&again, "local", "a1", "tank/db"),
            find(&first, "local", "a1", "tank/db")
        );
        // a3 full: moved, with the reason.
        set_free(&mut nodes[2], 10);
        let moved = plan(&tasks(), &nodes, &sources, &first.pairings);
        let m = find(&moved, "local", "a1", "tank/db");
        assert_eq!(m.target_node, "a2");
        assert_eq!(m.reason, "re-paired: target a3 is full");
        // a3 gone from the fleet.
        let nodes: Vec<_> = fleet().into_iter().filter(|n| n.name != "a3").collect();
        let gone = plan(&tasks(), &nodes, &sources, &first.pairings);
        assert_eq!(
            find(&gone, "local", "a1", "tank/db").reason,
            "re-paired: target a3 left the fleet"
        );
    }

    #[test]
    fn says_why_a_dataset_cannot_be_paired() {
        // b1's local copy needs an ssd... b2 is ssd, fine; but a dataset too big for every hdd in site a:
        let sources = vec![src("a1", "tank/huge", 10_000)];
        let p = plan(&tasks(), &fleet(), &sources, &[]);
        let u: Vec<_> = p.unpaired.iter().filter(|u| u.task == "local").collect();
        assert_eq!(u.len(), 1);
        assert!(u[0].why.contains("bytes free"), "{}", u[0].why);
        // A single-site fleet cannot satisfy an offsite task.
        let nodes: Vec<_> = fleet().into_iter().filter(|n| n.site == "a").collect();
        let p = plan(&tasks(), &nodes, &[src("a1", "tank/db", 1)], &[]);
        let u = p.unpaired.iter().find(|u| u.task == "offsite").unwrap();
        assert_eq!(u.why, "no node matches the task's target site and media");
    }

    #[test]
    fn only_selected_datasets_are_paired() {
        let mut other = src("a1", "tank/x", 1);
        other.class = None;
        let p = plan(&tasks(), &fleet(), &[other, src("a2", "tank/db", 1)], &[]);
        assert!(p.pairings.iter().all(|x| x.dataset == "tank/db"));
        // The offsite task is limited to node a1.
        assert!(p.pairings.iter().all(|x| x.task == "local"));
    }

    #[test]
    fn reserves_per_target_pool_so_a_full_target_is_not_chosen() {
        // Site a's hdd nodes: a3 has room for one 100-byte dataset (120 with
        // headroom) in pool backup, not two; a2 has room for two.
        let mut nodes = fleet();
        set_free(&mut nodes[1], 300);
        set_free(&mut nodes[2], 200);
        let sources = vec![src("a1", "tank/db", 100), src("a1", "tank/home", 100)];
        let local: Vec<Task> = tasks().into_iter().filter(|t| t.name == "local").collect();
        let p = plan(&local, &nodes, &sources, &[]);
        let targets: Vec<&str> = p.pairings.iter().map(|x| x.target_node.as_str()).collect();
        assert_eq!(targets, ["a2", "a3"], "{p:?}");
        // Four: a2, a3, a2 again (a3 has 80 left), and the fourth fits
        // nowhere. Checked one at a time against free space, a3 would take
        // the fourth (it has the lower load) and be over-committed.
        let more = vec![
            src("a1", "tank/db", 100),
            src("a1", "tank/home", 100),
            src("a1", "tank/logs", 100),
            src("a1", "tank/mail", 100),
        ];
        let p = plan(&local, &nodes, &more, &[]);
        let on = |n: &str| p.pairings.iter().filter(|x| x.target_node == n).count();
        assert_eq!((on("a2"), on("a3")), (2, 1), "{p:?}");
        assert_eq!(p.unpaired.len(), 1, "{p:?}");
        assert!(
            p.unpaired[0].why.contains("pool backup"),
            "{}",
            p.unpaired[0].why
        );

        // Free space is never summed across pools: a target whose room is
        // split over two pools, neither big enough, is not chosen.
        let mut split = fleet();
        split[1].pools = [("backup".into(), 100), ("other".into(), 100)].into();
        split[2].pools = [("backup".into(), 50), ("other".into(), 10_000)].into();
        let p = plan(&local, &split, &[src("a1", "tank/db", 100)], &[]);
        assert!(p.pairings.is_empty(), "{p:?}");
        assert_eq!(p.unpaired.len(), 1);
    }
}
