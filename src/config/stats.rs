//! System stats monitor configs (upstream NPD's metrics-only monitor, no
//! `plugin` key): checked for shape so upstream files validate; npd-ext
//! does not run them.

use std::path::Path;

use super::Checked;
use super::json::{self, Value};
use super::walk::{self, Obj, Sink};

const COLLECTORS: [&str; 6] = ["cpu", "disk", "host", "memory", "osFeature", "net"];

/// Checks the shape of a system stats monitor config.
pub fn check(file: &Path, text: &str) -> Checked<()> {
    super::check_with(file, text, |sink, _, doc| {
        read(sink, doc);
        Some(())
    })
}

fn read(sink: &mut Sink, doc: &json::Node) {
    let Some(mut top) = Obj::new(sink, doc, "") else {
        return;
    };
    sink.warn(
        top.pos,
        "",
        "a system stats monitor (metrics only): npd-ext checks its shape but does not run it",
    );
    if let Some(f) = top.get(sink, &["invokeInterval"]) {
        walk::duration(sink, &f);
    }
    if let Some(f) = top.get(sink, &["procPath"]) {
        walk::string(sink, &f);
    }
    for name in COLLECTORS {
        let Some(f) = top.get(sink, &[name]) else {
            continue;
        };
        let Some(mut c) = Obj::new(sink, f.node, &f.key) else {
            continue;
        };
        if let Some(m) = c.get(sink, &["metricsConfigs"]) {
            // Metric IDs are open-ended: every key is accepted, each entry checked.
            match &m.node.value {
                Value::Object(members) => {
                    for id in members {
                        let path = walk::join(&m.key, &id.key);
                        if let Some(mut e) = Obj::new(sink, &id.value, &path) {
                            if let Some(d) = e.get(sink, &["displayName"]) {
                                walk::string(sink, &d);
                            }
                            e.finish(sink);
                        }
                    }
                }
                other => sink.error(
                    m.node.pos,
                    &m.key,
                    format!("must be an object, found {}", other.kind()),
                ),
            }
        }
        match name {
            "disk" => {
                for key in ["includeRootBlk", "includeAllAttachedBlk"] {
                    if let Some(f) = c.get(sink, &[key]) {
                        walk::boolean(sink, &f);
                    }
                }
                if let Some(f) = c.get(sink, &["lsblkTimeout"]) {
                    walk::duration(sink, &f);
                }
            }
            "osFeature" => {
                if let Some(f) = c.get(sink, &["knownModulesConfigPath"]) {
                    walk::string(sink, &f);
                }
            }
            "net" => {
                if let Some(f) = c.get(sink, &["excludeInterfaceRegexp"])
                    && let Some(re) = walk::string(sink, &f)
                    && let Err(e) = super::goregex::compile(&re)
                {
                    sink.error(
                        f.node.pos,
                        &f.key,
                        format!("invalid regex: {}", super::goregex::describe(&re, &e)),
                    );
                }
            }
            _ => {}
        }
        c.finish(sink);
    }
    top.finish(sink);
}
