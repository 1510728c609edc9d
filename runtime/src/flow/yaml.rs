//! A YAML document as a tree whose every node knows its line, so that a refused workflow file
//! names the line at fault. yaml-rust2 parses; its own `Yaml` tree drops positions, so the tree
//! is built here from the parser's marked events.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One node and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar; `plain` if unquoted (only a plain `~`, `null` or empty scalar is null).
    Scalar { text: String, plain: bool },
    /// A mapping's entries in file order.
    Map(Vec<(Node, Node)>),
    Seq(Vec<Node>),
}

/// A syntax error: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub reason: String,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if text.is_empty() || text == "~" || text == "null")
    }

    /// The scalar's text, if it is a non-null scalar.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(e) => Some(e),
            _ => None,
        }
    }

    /// The value under scalar key `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?.iter().find(|(k, _)| k.text() == Some(key)).map(|(_, v)| v)
    }
}

/// Parses one YAML document (an empty file is an error: a workflow file has content).
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|e| SyntaxError { line: e.marker().line(), reason: e.info().to_string() })?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    builder.root.ok_or(SyntaxError { line: 1, reason: "the file is empty".into() })
}

#[derive(Default)]
struct Builder {
    /// Open containers, with a mapping's key waiting for its value.
    stack: Vec<(Node, Option<Node>)>,
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn attach(&mut self, node: Node) {
        let Some((parent, key)) = self.stack.last_mut() else {
            self.root.get_or_insert(node);
            return;
        };
        match &mut parent.value {
            Value::Seq(items) => items.push(node),
            Value::Map(entries) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    if entries.iter().any(|(e, _)| e.text().is_some() && e.text() == k.text()) && self.error.is_none() {
                        self.error = Some(SyntaxError { line: k.line, reason: format!("duplicate key {:?}", k.text().unwrap_or_default()) });
                    }
                    entries.push((k, node));
                }
            },
            Value::Scalar { .. } => unreachable!("only containers are pushed"),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, _, _) => self.attach(Node { line, value: Value::Scalar { text, plain: style == TScalarStyle::Plain } }),
            Event::MappingStart(..) => self.stack.push((Node { line, value: Value::Map(Vec::new()) }, None)),
            Event::SequenceStart(..) => self.stack.push((Node { line, value: Value::Seq(Vec::new()) }, None)),
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.attach(node);
                }
            }
            Event::Alias(_) if self.error.is_none() => {
                self.error = Some(SyntaxError { line, reason: "YAML aliases are not supported in workflow files".into() });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_mappings_with_lone_keys_have_null_values_and_lines() {
        let n = parse("a:\n  b: { c }\n  d: { $USER }\n  e: 'x'\n").unwrap();
        let a = n.get("a").unwrap();
        assert_eq!(a.line, 2);
        let (k, v) = &a.get("b").unwrap().entries().unwrap()[0];
        assert_eq!((k.text(), v.is_null(), k.line), (Some("c"), true, 2));
        assert_eq!(a.get("d").unwrap().entries().unwrap()[0].0.text(), Some("$USER"));
        assert_eq!(a.get("e").unwrap().text(), Some("x"));
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_name_their_line() {
        assert_eq!(parse("a: 1\nb: [1, 2\n").unwrap_err().line, 3);
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.line, 3, "{e:?}");
        assert!(e.reason.contains("duplicate"), "{e:?}");
        assert!(parse("").is_err());
        assert!(parse("a: &x 1\nb: *x\n").unwrap_err().reason.contains("alias"));
    }
}
