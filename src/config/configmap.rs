//! Monitor configs embedded in a Kubernetes ConfigMap manifest (YAML, one
//! or more documents): each `data` entry of every `kind: ConfigMap`, with a
//! map from positions in the embedded JSON back to the manifest, so a
//! problem is reported where the operator edits it.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use super::json::Pos;

/// One `data` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The ConfigMap's name (`metadata.name`), when it has one.
    pub configmap: Option<String>,
    pub key: String,
    pub text: String,
    map: PosMap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PosMap {
    /// Manifest line of the value's first line.
    first_line: u32,
    /// Column added to every column (the block's indentation, or where an
    /// inline value starts).
    shift: u32,
}

impl Entry {
    /// Where position `p` of the entry's text is in the manifest.
    pub fn manifest_pos(&self, p: Pos) -> Pos {
        Pos {
            line: self.map.first_line + p.line.saturating_sub(1),
            col: self.map.shift + p.col,
        }
    }
}

/// Whether `text` is a Kubernetes manifest rather than a JSON config.
pub fn is_manifest(text: &str) -> bool {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    first == "---" || first.starts_with("apiVersion:") || first.starts_with("kind:")
}

#[derive(Debug)]
struct Frame {
    map: bool,
    key: Option<String>,
    expect_key: bool,
}

/// Every `data` entry of every ConfigMap in the manifest.
pub fn entries(text: &str) -> Result<Vec<Entry>, (Pos, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut doc: Vec<Entry> = Vec::new();
    let mut kind: Option<String> = None;
    let mut name: Option<String> = None;
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| {
            (
                Pos {
                    line: u32::try_from(e.marker().line()).unwrap_or(u32::MAX),
                    col: u32::try_from(e.marker().col() + 1).unwrap_or(u32::MAX),
                },
                format!("invalid YAML: {}", e.info()),
            )
        })?;
        match event {
            Event::DocumentStart(_) => {
                doc.clear();
                kind = None;
                name = None;
                stack.clear();
            }
            Event::DocumentEnd if kind.as_deref() == Some("ConfigMap") => {
                for mut e in doc.drain(..) {
                    e.configmap.clone_from(&name);
                    out.push(e);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                stack.push(Frame {
                    map: matches!(event, Event::MappingStart(..)),
                    key: None,
                    expect_key: true,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                if let Some(parent) = stack.last_mut() {
                    parent.expect_key = true;
                }
            }
            Event::Scalar(value, style, ..) => {
                let Some(top) = stack.last_mut() else {
                    continue;
                };
                if top.map && top.expect_key {
                    top.key = Some(value.into_owned());
                    top.expect_key = false;
                    continue;
                }
                top.expect_key = true;
                let path: Vec<&str> = stack.iter().filter_map(|f| f.key.as_deref()).collect();
                match path.as_slice() {
                    ["kind"] if stack.len() == 1 => kind = Some(value.into_owned()),
                    ["metadata", "name"] if stack.len() == 2 => name = Some(value.into_owned()),
                    ["data", key] if stack.len() == 2 => doc.push(Entry {
                        configmap: None,
                        key: (*key).to_owned(),
                        text: value.into_owned(),
                        map: pos_map(&lines, span, style),
                    }),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn pos_map(lines: &[&str], span: Span, style: ScalarStyle) -> PosMap {
    let line = span.start.line();
    let col = span.start.col();
    let as_u32 = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    match style {
        ScalarStyle::Literal | ScalarStyle::Folded => {
            // The text starts on the line after the `|` (where the span may
            // start), as indented as its first line that is not blank.
            let at_indicator = lines
                .get(line.saturating_sub(1))
                .and_then(|l| l.get(col..))
                .is_some_and(|rest| rest.trim_start().starts_with(['|', '>']));
            let first = if at_indicator { line + 1 } else { line };
            let indent = lines
                .iter()
                .skip(first - 1)
                .find(|l| !l.trim().is_empty())
                .map_or(0, |l| l.len() - l.trim_start().len());
            PosMap {
                first_line: as_u32(first),
                shift: as_u32(indent),
            }
        }
        ScalarStyle::Plain => PosMap {
            first_line: as_u32(line),
            shift: as_u32(col),
        },
        // Past the opening quote (escapes make it approximate).
        _ => PosMap {
            first_line: as_u32(line),
            shift: as_u32(col + 1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: v1
kind: Service
metadata:
  name: not-this
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: npd-ext-config
  namespace: kube-system
data:
  kernel-monitor.json: |
    {
      \"plugin\": \"kmsg\",
      \"source\": \"kernel-monitor\"
    }
  check.sh: |
    #!/bin/sh
    exit 0
  inline.json: '{\"plugin\": \"custom\"}'
";

    #[test]
    fn data_entries_of_config_maps_with_positions() {
        assert!(is_manifest(MANIFEST));
        assert!(!is_manifest("{\"plugin\": \"kmsg\"}"));
        let e = entries(MANIFEST).expect("parses");
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["kernel-monitor.json", "check.sh", "inline.json"]);
        assert_eq!(e[0].configmap.as_deref(), Some("npd-ext-config"));
        assert!(e[0].text.starts_with("{\n  \"plugin\": \"kmsg\""));
        // `"source"` is on line 3, column 3 of the JSON: line 15, column 7 here.
        assert_eq!(
            e[0].manifest_pos(Pos { line: 3, col: 3 }),
            Pos { line: 15, col: 7 }
        );
        // Inline: line 20, after `  inline.json: '`.
        assert_eq!(
            e[2].manifest_pos(Pos { line: 1, col: 2 }),
            Pos { line: 20, col: 18 }
        );
    }

    #[test]
    fn bad_yaml_is_reported_with_its_position() {
        let (pos, msg) = entries("kind: ConfigMap\ndata:\n  a: [unclosed\n").expect_err("invalid");
        assert!(msg.starts_with("invalid YAML"), "{msg}");
        assert!(pos.line >= 3, "{pos:?}");
    }
}
