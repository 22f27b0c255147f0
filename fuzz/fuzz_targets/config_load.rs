//! Any text as every kind of monitor config, and as a ConfigMap manifest:
//! checking must never panic, and a config is only returned without errors.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use npd_ext::config::{self, Level, configmap, golayout};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.json");
    let _ = config::kind_of(text);
    let s = config::syslog::check(path, text);
    assert!(s.config.is_none() || s.diagnostics.iter().all(|d| d.level != Level::Error || d.unknown_key));
    if let Some(cfg) = s.config {
        // A config that checks clean compiles into a rule engine.
        npd_ext::monitor::syslog::rules::RuleEngine::new(&cfg.rules, cfg.buffer_size)
            .expect("checked patterns compile");
    }
    let _ = config::custom::check(path, text);
    let _ = config::external::check(path, text);
    let _ = config::stats::check(path, text);
    if let Ok(entries) = configmap::entries(text) {
        for e in entries {
            let _ = e.manifest_pos(config::Pos { line: 1, col: 1 });
        }
    }
    if let Ok(layout) = golayout::Layout::new(text) {
        let _ = layout.parse(text, std::time::SystemTime::now());
    }
});
