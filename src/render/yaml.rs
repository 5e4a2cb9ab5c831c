//! A small YAML writer for the documents `render` produces: block style, insertion order kept,
//! small scalar-only maps and lists inline (`{ a: 1 }`), multi-line text as a literal block, and
//! every string that a YAML 1.1 or 1.2 reader could take for something else double-quoted.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
    Str(String),
    Int(i64),
    Bool(bool),
    /// Multi-line text written as a literal block (`|`), e.g. the plugin configuration.
    Text(String),
}

/// `map([("k", v.into()), ...])`.
pub fn map<const N: usize>(entries: [(&str, Node); N]) -> Node {
    Node::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

pub fn list(items: impl IntoIterator<Item = Node>) -> Node {
    Node::List(items.into_iter().collect())
}

impl From<&str> for Node {
    fn from(s: &str) -> Node {
        Node::Str(s.to_string())
    }
}
impl From<String> for Node {
    fn from(s: String) -> Node {
        Node::Str(s)
    }
}
impl From<&String> for Node {
    fn from(s: &String) -> Node {
        Node::Str(s.clone())
    }
}
impl From<bool> for Node {
    fn from(b: bool) -> Node {
        Node::Bool(b)
    }
}
impl From<u16> for Node {
    fn from(n: u16) -> Node {
        Node::Int(n.into())
    }
}
impl From<u32> for Node {
    fn from(n: u32) -> Node {
        Node::Int(n.into())
    }
}
impl From<i64> for Node {
    fn from(n: i64) -> Node {
        Node::Int(n)
    }
}

impl Node {
    /// A JSON value as a node (object keys keep serde_json's order).
    pub fn from_json(value: &Value) -> Node {
        match value {
            Value::Null => Node::Str(String::new()),
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => n.as_i64().map_or(Node::Str(n.to_string()), Node::Int),
            Value::String(s) => Node::Str(s.clone()),
            Value::Array(items) => Node::List(items.iter().map(Node::from_json).collect()),
            Value::Object(map) => Node::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Entries of a map node (empty for anything else).
    pub fn entries_mut(&mut self) -> Option<&mut Vec<(String, Node)>> {
        match self {
            Node::Map(entries) => Some(entries),
            _ => None,
        }
    }
}

/// Inline form is used up to this many characters.
const FLOW_WIDTH: usize = 88;

/// The document as YAML text (no leading `---`).
pub fn to_yaml(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(entries) => write_map(&mut out, entries, 0, None),
        Node::List(items) => write_list(&mut out, items, 0),
        other => {
            out.push_str(&flow(other).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat(' ').take(n));
}

fn write_map(out: &mut String, entries: &[(String, Node)], at: usize, mut lead: Option<String>) {
    if entries.is_empty() {
        match lead {
            Some(l) => out.push_str(&l),
            None => indent(out, at),
        }
        out.push_str("{}\n");
        return;
    }
    for (key, value) in entries {
        match lead.take() {
            Some(l) => out.push_str(&l),
            None => indent(out, at),
        }
        out.push_str(&scalar(key));
        out.push(':');
        write_value(out, value, at);
    }
}

/// The value after `key:` of an entry at indentation `at`.
fn write_value(out: &mut String, value: &Node, at: usize) {
    if let Some(text) = flow(value) {
        out.push(' ');
        out.push_str(&text);
        out.push('\n');
        return;
    }
    match value {
        Node::Map(entries) => {
            out.push('\n');
            write_map(out, entries, at + 2, None);
        }
        // A long list of numbers (status codes): a flow sequence over several lines.
        Node::List(items) if items.iter().all(|i| matches!(i, Node::Int(_))) => {
            out.push_str(" [");
            let mut line = at + 2;
            for (n, item) in items.iter().enumerate() {
                let text = flow(item).unwrap_or_default();
                if n > 0 {
                    out.push(',');
                    if line + text.len() + 2 > FLOW_WIDTH {
                        out.push('\n');
                        indent(out, at + 2);
                        line = at + 2;
                    } else {
                        out.push(' ');
                        line += 2;
                    }
                }
                out.push_str(&text);
                line += text.len();
            }
            out.push_str("]\n");
        }
        Node::List(items) => {
            out.push('\n');
            write_list(out, items, at);
        }
        Node::Text(text) => write_block(out, text, at + 2),
        // Scalars always have a flow form.
        Node::Str(_) | Node::Int(_) | Node::Bool(_) => out.push('\n'),
    }
}

fn write_list(out: &mut String, items: &[Node], at: usize) {
    for item in items {
        match (flow(item), item) {
            (Some(text), _) => {
                indent(out, at);
                out.push_str("- ");
                out.push_str(&text);
                out.push('\n');
            }
            (None, Node::Map(entries)) => {
                let mut lead = " ".repeat(at);
                lead.push_str("- ");
                write_map(out, entries, at + 2, Some(lead));
            }
            (None, Node::List(inner)) => {
                indent(out, at);
                out.push_str("-\n");
                write_list(out, inner, at + 2);
            }
            (None, Node::Text(text)) => {
                indent(out, at);
                out.push('-');
                write_block(out, text, at + 2);
            }
            (None, _) => {}
        }
    }
}

fn write_block(out: &mut String, text: &str, at: usize) {
    let text = text.replace("\r\n", "\n");
    let text = text.trim();
    if text.is_empty() || text.contains('\r') {
        out.push(' ');
        out.push_str(&quoted(text));
        out.push('\n');
        return;
    }
    out.push_str(" |\n");
    for line in text.lines() {
        if !line.trim().is_empty() {
            indent(out, at);
            out.push_str(line.trim_end());
        }
        out.push('\n');
    }
}

/// The inline form of a node, if it has a short one.
fn flow(node: &Node) -> Option<String> {
    let text = match node {
        Node::Str(s) => scalar(s),
        Node::Int(n) => n.to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Text(_) => return None,
        Node::Map(entries) => {
            if entries.is_empty() {
                return Some("{}".into());
            }
            let mut parts = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                if matches!(v, Node::Map(_) | Node::List(_) | Node::Text(_)) {
                    return None;
                }
                parts.push(format!("{}: {}", scalar(k), flow(v)?));
            }
            format!("{{ {} }}", parts.join(", "))
        }
        Node::List(items) => {
            if items.is_empty() {
                return Some("[]".into());
            }
            let mut parts = Vec::with_capacity(items.len());
            for v in items {
                if matches!(v, Node::Map(_) | Node::List(_) | Node::Text(_)) {
                    return None;
                }
                parts.push(flow(v)?);
            }
            format!("[{}]", parts.join(", "))
        }
    };
    (text.len() <= FLOW_WIDTH || matches!(node, Node::Str(_) | Node::Int(_) | Node::Bool(_)))
        .then_some(text)
}

/// A string as a plain scalar when that is unambiguous, else double-quoted (JSON escapes are
/// valid YAML escapes).
fn scalar(s: &str) -> String {
    if is_plain(s) {
        s.to_string()
    } else {
        quoted(s)
    }
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn is_plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-');
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        // Numbers, IPs, versions, `-x`, `.x`: quote them all rather than guess how a reader
        // resolves them, except dotted IPv4-like strings which no YAML reader takes as numbers.
        return first.is_ascii_digit()
            && s.chars().all(|c| c.is_ascii_digit() || c == '.')
            && s.matches('.').count() >= 2;
    }
    let reserved = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf",
    ];
    s.chars().all(safe) && !reserved.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_that_could_be_misread_are_quoted() {
        for (s, want) in [
            ("name", "name"),
            ("type.googleapis.com/envoy.X", "type.googleapis.com/envoy.X"),
            ("@type", "\"@type\""),
            ("origin_pull|http|a.com|80", "\"origin_pull|http|a.com|80\""),
            ("*", "\"*\""),
            ("true", "\"true\""),
            ("No", "\"No\""),
            ("80", "\"80\""),
            ("1.5", "\"1.5\""),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1:80", "\"127.0.0.1:80\""),
            ("1s", "\"1s\""),
            ("", "\"\""),
            ("a: b", "\"a: b\""),
            ("x-origin-pull-cluster", "x-origin-pull-cluster"),
            ("%START_TIME% \"q\"\n", "\"%START_TIME% \\\"q\\\"\\n\""),
        ] {
            assert_eq!(scalar(s), want, "{s:?}");
        }
    }

    #[test]
    fn nested_document_layout() {
        let doc = map([
            (
                "admin",
                map([("address", map([("port_value", 9901u16.into())]))]),
            ),
            (
                "clusters",
                list([map([
                    ("name", "c".into()),
                    ("hosts", list([map([("a", "b".into())]), map([])])),
                ])]),
            ),
            ("domains", list(["*".into()])),
            ("empty", list([])),
            ("config", Node::Text("{\n  \"a\": 1\n}\n".into())),
        ]);
        assert_eq!(
            to_yaml(&doc),
            "admin:\n  address: { port_value: 9901 }\nclusters:\n- name: c\n  hosts:\n  - { a: b }\n  - {}\n\
             domains: [\"*\"]\nempty: []\nconfig: |\n  {\n    \"a\": 1\n  }\n"
        );
    }

    #[test]
    fn long_maps_are_written_as_blocks() {
        let long = "x".repeat(90);
        let doc = map([("m", map([("k", long.as_str().into())]))]);
        assert_eq!(to_yaml(&doc), format!("m:\n  k: {long}\n"));
    }

    #[test]
    fn json_values_convert() {
        let v: Value = serde_json::json!({"a": [1, true, "x"], "b": {}});
        assert_eq!(
            Node::from_json(&v),
            map([
                ("a", list([Node::Int(1), Node::Bool(true), "x".into()])),
                ("b", Node::Map(vec![])),
            ])
        );
    }
}
