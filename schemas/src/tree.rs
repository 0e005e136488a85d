//! A YAML document as a tree that remembers where every key and value starts,
//! so that any error, including semantic ones found long after parsing, can
//! point at the line and column an admin has to edit.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use zdr_common::policy::Period;

/// A 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// `plain` is false for quoted and block scalars, which are always text.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

impl Node {
    /// A plain scalar that YAML reads as null, such as an empty value.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }
}

impl Entry {
    /// Where to point for this entry's value: the value itself when it is a
    /// scalar, the key when the value is empty or spans several lines.
    pub fn value_pos(&self) -> Pos {
        match &self.value.value {
            Value::Scalar { .. } if !self.value.is_null() => self.value.pos,
            _ => self.key_pos,
        }
    }
}

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a path as admins read it: `classes.gold.tiers`, `datasets[2].class`.
pub(crate) fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// An error found while building or checking the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub pos: Pos,
    pub path: Vec<Seg>,
    pub message: String,
}

/// Parses one YAML document; `Ok(None)` for a file with no content.
pub(crate) fn parse(text: &str) -> Result<Option<Node>, Located> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    let end = end_of(text);
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| {
            let pos = Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            };
            syntax_error(text, within(end, pos), e.info())
        })?;
        let pos = within(end, Pos::of(&span));
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(Located {
                        pos,
                        path: Vec::new(),
                        message: "a second YAML document starts here; keep the whole file in one document (remove the `---`)"
                            .into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _) => {
                let plain = style == ScalarStyle::Plain;
                let node = Node {
                    pos,
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                };
                builder.complete(node, anchor)?;
            }
            Event::Alias(anchor) => {
                let node = builder.alias(anchor).map_err(|message| Located {
                    pos,
                    path: Vec::new(),
                    message,
                })?;
                builder.complete(node, 0)?;
            }
            Event::SequenceStart(anchor, _) => builder.stack.push(Frame::seq(pos, anchor)),
            Event::MappingStart(anchor, _) => builder.stack.push(Frame::map(pos, anchor)),
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = builder
                    .stack
                    .pop()
                    .expect("parser balances start and end events");
                let anchor = frame.anchor;
                builder.complete(frame.into_node(), anchor)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(builder.root.filter(|root| !root.is_null()))
}

/// The parser reports the end of input (an error there, or an empty node)
/// on the line after the last when the text does not end with a line break
/// (found by fuzzing); an editor has no such line, so such a position becomes
/// `end`, just past the last character ([`end_of`]).
fn within(end: Pos, pos: Pos) -> Pos {
    if pos.line <= end.line {
        pos
    } else {
        end
    }
}

/// Just past the text's last character.
fn end_of(text: &str) -> Pos {
    let lines = yaml_lines(text);
    Pos {
        line: lines.len(),
        column: lines.last().map_or(0, |l| l.chars().count()) + 1,
    }
}

/// The text's lines as YAML counts them: `\n`, `\r\n` and a lone `\r` each
/// end one.
fn yaml_lines(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
    while i < bytes.len() {
        if bytes[i] == b'\n' || bytes[i] == b'\r' {
            out.push(&text[start..i]);
            if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    out.push(&text[start..]);
    out
}

/// Tabs in indentation are the most common cause of a syntax error in hand
/// edited YAML, and parsers report them far from the tab; point at the tab.
fn syntax_error(text: &str, pos: Pos, info: &str) -> Located {
    let tab = text
        .lines()
        .enumerate()
        .take(pos.line + 1)
        .find_map(|(i, line)| {
            let indent = &line[..line.len() - line.trim_start().len()];
            indent.find('\t').map(|at| Pos {
                line: i + 1,
                column: indent[..at].chars().count() + 1,
            })
        });
    match tab {
        Some(tab) => Located {
            pos: tab,
            path: Vec::new(),
            message: "tab character in the indentation; YAML indents with spaces only".into(),
        },
        None => Located {
            pos,
            path: Vec::new(),
            message: format!("YAML syntax error: {info}"),
        },
    }
}

struct Frame {
    pos: Pos,
    anchor: usize,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map(Vec<Entry>, Option<(String, Pos)>),
}

impl Frame {
    fn seq(pos: Pos, anchor: usize) -> Frame {
        Frame {
            pos,
            anchor,
            kind: FrameKind::Seq(Vec::new()),
        }
    }

    fn map(pos: Pos, anchor: usize) -> Frame {
        Frame {
            pos,
            anchor,
            kind: FrameKind::Map(Vec::new(), None),
        }
    }

    fn into_node(self) -> Node {
        let value = match self.kind {
            FrameKind::Seq(items) => Value::Seq(items),
            FrameKind::Map(entries, _) => Value::Map(entries),
        };
        Node {
            pos: self.pos,
            value,
        }
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    /// Nodes copied in by aliases so far.
    expanded: usize,
}

/// Aliases copy their anchor; nested ones multiply, so cap the total
/// ("billion laughs") well above anything a spec file needs.
const MAX_EXPANDED: usize = 100_000;

fn size(node: &Node) -> usize {
    1 + match &node.value {
        Value::Scalar { .. } => 0,
        Value::Seq(items) => items.iter().map(size).sum(),
        Value::Map(entries) => entries.iter().map(|e| 1 + size(&e.value)).sum(),
    }
}

impl Builder {
    fn alias(&mut self, anchor: usize) -> Result<Node, String> {
        let node = self
            .anchors
            .get(&anchor)
            .ok_or("alias refers to an anchor that is not defined before it")?;
        self.expanded += size(node);
        if self.expanded > MAX_EXPANDED {
            return Err(format!(
                "aliases expand to more than {MAX_EXPANDED} values; use fewer or smaller aliases"
            ));
        }
        Ok(node.clone())
    }

    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), Located> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some(top) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match &mut top.kind {
            FrameKind::Seq(items) => items.push(node),
            FrameKind::Map(entries, pending) => match pending.take() {
                Some((key, key_pos)) => entries.push(Entry {
                    key,
                    key_pos,
                    value: node,
                }),
                None => match node.value {
                    Value::Scalar { text, .. } => *pending = Some((text, node.pos)),
                    _ => {
                        return Err(Located {
                            pos: node.pos,
                            path: Vec::new(),
                            message: "a key must be a plain name, not a list or mapping".into(),
                        })
                    }
                },
            },
        }
        Ok(())
    }
}

/// Keys that appear twice in one mapping. YAML parsers keep one of them
/// silently, so an admin's edit could be ignored without a word. Tier keys
/// that name the same period (`1h` and `hourly`) count as the same key.
pub(crate) fn duplicates(root: &Node) -> Vec<Located> {
    let mut out = Vec::new();
    walk_duplicates(root, &mut Vec::new(), &mut out);
    out
}

fn walk_duplicates(node: &Node, path: &mut Vec<Seg>, out: &mut Vec<Located>) {
    match &node.value {
        Value::Scalar { .. } => {}
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                walk_duplicates(item, path, out);
                path.pop();
            }
        }
        Value::Map(entries) => {
            let tiers = matches!(path.last(), Some(Seg::Key(k)) if k == "tiers");
            for (i, entry) in entries.iter().enumerate() {
                let first = entries[..i]
                    .iter()
                    .find(|e| same_key(tiers, &e.key, &entry.key));
                if let Some(first) = first {
                    let message = if first.key == entry.key {
                        format!(
                            "duplicate key `{}` (first at line {}, column {}); YAML would keep only one, so remove or merge them",
                            entry.key, first.key_pos.line, first.key_pos.column
                        )
                    } else {
                        format!(
                            "tier `{}` is the same period as `{}` (line {}, column {}); keep one of them",
                            entry.key, first.key, first.key_pos.line, first.key_pos.column
                        )
                    };
                    out.push(Located {
                        pos: entry.key_pos,
                        path: path.clone(),
                        message,
                    });
                }
                path.push(Seg::Key(entry.key.clone()));
                walk_duplicates(&entry.value, path, out);
                path.pop();
            }
        }
    }
}

fn same_key(tiers: bool, a: &str, b: &str) -> bool {
    a == b || (tiers && same_period(a, b))
}

fn same_period(a: &str, b: &str) -> bool {
    matches!((a.parse::<Period>(), b.parse::<Period>()), (Ok(x), Ok(y)) if x == y)
}

/// Where a semantic problem's path points, and the path as rendered. A path
/// that does not exist in the document (a defaulted key) points at its
/// nearest ancestor that does.
pub(crate) fn locate(root: &Node, path: &[String]) -> (Pos, Vec<Seg>) {
    let mut pos = root.pos;
    let mut node = Some(root);
    let mut parent_key: Option<&str> = None;
    let mut segs = Vec::with_capacity(path.len());
    for step in path {
        let next = match node.map(|n| &n.value) {
            Some(Value::Map(entries)) => {
                let tiers = parent_key == Some("tiers");
                entries
                    .iter()
                    .find(|e| e.key == *step)
                    .or_else(|| entries.iter().find(|e| tiers && same_period(&e.key, step)))
                    .map(|e| (Seg::Key(e.key.clone()), e.value_pos(), &e.value))
            }
            Some(Value::Seq(items)) => step
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i).map(|item| (Seg::Index(i), item.pos, item))),
            _ => None,
        };
        match next {
            Some((seg, at, child)) => {
                segs.push(seg);
                pos = at;
                node = Some(child);
            }
            None => {
                // Not in the document: a list index stays an index (`match[0]`
                // of a single pattern), anything else is a key.
                segs.push(
                    step.parse()
                        .map(Seg::Index)
                        .unwrap_or_else(|_| Seg::Key(step.clone())),
                );
                node = None;
            }
        }
        parent_key = Some(step);
    }
    (pos, segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_at_the_end_of_input_stays_in_the_file() {
        for text in [
            "a:\n  - b\n c",
            "a: [1, 2",
            "a: {b: 1",
            "a: 'x",
            "a:\n  b: 1\n c: 2\n x",
            "a:\r  b: 1\r c: 2\r x",
        ] {
            let e = parse(text).expect_err(text);
            let lines = yaml_lines(text);
            assert!(e.pos.line <= lines.len(), "{text:?}: {e:?}");
            assert!(
                e.pos.column <= lines[e.pos.line - 1].chars().count() + 1,
                "{text:?}: {e:?}"
            );
        }
    }

    #[test]
    fn positions_are_one_based() {
        let root = parse("a:\n  b: 1\n  c:\n    - x\n").unwrap().unwrap();
        let at = |p: &[&str]| {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            let (pos, segs) = locate(&root, &p);
            (pos.to_string(), render(&segs))
        };
        assert_eq!(at(&["a", "b"]), ("2:6".into(), "a.b".into()));
        assert_eq!(at(&["a", "c", "0"]), ("4:7".into(), "a.c[0]".into()));
        assert_eq!(
            at(&["a", "missing", "deeper"]),
            ("1:1".into(), "a.missing.deeper".into())
        );
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let root = parse("a: &t {hourly: 2}\nb: *t\n").unwrap().unwrap();
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert!(matches!(&entries[1].value.value, Value::Map(e) if e[0].key == "hourly"));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..6 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                [prev.as_str(); 10].join(", ")
            ));
        }
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.pos,
            Pos {
                line: 5,
                column: 45
            }
        );
        assert!(err.message.contains("more than 100000"), "{}", err.message);
    }

    #[test]
    fn empty_documents_have_no_root() {
        for text in ["", "# only a comment\n", "---\n", "~\n"] {
            assert!(parse(text).unwrap().is_none(), "{text:?}");
        }
    }
}
