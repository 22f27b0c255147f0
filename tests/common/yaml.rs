//! YAML manifests as JSON values, for tests that check what a manifest
//! says (the detector itself only reads ConfigMap data, config::configmap).
#![allow(dead_code, clippy::expect_used, clippy::panic)]

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Value};

enum Frame {
    Map(Map<String, Value>, Option<String>),
    Seq(Vec<Value>),
}

fn scalar(v: &str, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::String(v.to_owned());
    }
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" | "~" | "" => Value::Null,
        _ => v
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| v.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(v.to_owned())),
    }
}

/// Every document of a YAML stream.
pub fn documents(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut done: Option<Value> = None;
    for item in Parser::new_from_str(text) {
        let (event, _) = item.expect("valid YAML");
        let value = match event {
            Event::DocumentEnd => {
                docs.extend(done.take());
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(Frame::Map(Map::new(), None));
                continue;
            }
            Event::SequenceStart(..) => {
                stack.push(Frame::Seq(Vec::new()));
                continue;
            }
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(m, _)) => Value::Object(m),
                _ => panic!("unbalanced mapping"),
            },
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(s)) => Value::Array(s),
                _ => panic!("unbalanced sequence"),
            },
            Event::Scalar(v, style, ..) => {
                if let Some(Frame::Map(_, key @ None)) = stack.last_mut() {
                    *key = Some(v.into_owned());
                    continue;
                }
                scalar(&v, style)
            }
            _ => continue,
        };
        match stack.last_mut() {
            Some(Frame::Map(m, key)) => {
                let k = key.take().expect("a key before the value");
                m.insert(k, value);
            }
            Some(Frame::Seq(s)) => s.push(value),
            None => done = Some(value),
        }
    }
    docs
}
