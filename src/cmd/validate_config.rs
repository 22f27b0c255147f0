//! `npd-ext validate-config FILE...`: every problem in every file, each with
//! file:line:column and key path. A file may also be a ConfigMap manifest
//! (YAML): each JSON config in its `data` is checked and reported as
//! `manifest:configmap-key:line:col`, with the manifest's lines. A condition
//! type declared by two of the configs checked together is an error, as it
//! is for the detector. Exit 0 when all are valid, 1 otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::ValidateConfigArgs;
use crate::config::{self, Diagnostic, Kind, Level, configmap};

pub fn run(args: &ValidateConfigArgs) -> ExitCode {
    let mut invalid = 0usize;
    // Condition type → the config that declared it first.
    let mut owners: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in &args.files {
        for unit in units(path) {
            let mut diagnostics = unit.diagnostics;
            for t in unit.conditions {
                match owners.get(&t) {
                    Some(first) if *first != unit.name => diagnostics.push(Diagnostic {
                        level: Level::Error,
                        file: unit.name.clone(),
                        pos: None,
                        key: "conditions".into(),
                        message: format!(
                            "{t} is also declared by {}; each condition type needs exactly one owner (the detector refuses to start)",
                            first.display()
                        ),
                        help: None,
                        unknown_key: false,
                    }),
                    Some(_) => {}
                    None => {
                        owners.insert(t, unit.name.clone());
                    }
                }
            }
            let errors = diagnostics
                .iter()
                .filter(|d| d.level == Level::Error)
                .count();
            for d in &diagnostics {
                if d.level == Level::Error || !args.quiet {
                    say!("{d}");
                }
            }
            if errors > 0 {
                invalid += 1;
                say!(
                    "{}: invalid ({errors} error{})",
                    unit.name.display(),
                    if errors == 1 { "" } else { "s" }
                );
            } else if !args.quiet {
                say!("{}: {}", unit.name.display(), unit.verdict);
            }
        }
    }
    if invalid > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One config checked: a file, or one entry of a manifest.
#[derive(Debug)]
pub struct Unit {
    pub name: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
    /// Condition types the config declares (when it loads).
    pub conditions: Vec<String>,
    /// What to say when it has no error.
    pub verdict: &'static str,
}

/// Every config in one file: the file itself, or the JSON entries of the
/// ConfigMaps in a manifest.
pub fn units(path: &Path) -> Vec<Unit> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // The external checker reports an unreadable file in the usual shape.
        Err(_) => {
            return vec![Unit {
                name: path.to_path_buf(),
                diagnostics: config::check_external_file(path).diagnostics,
                conditions: Vec::new(),
                verdict: "ok",
            }];
        }
    };
    if !configmap::is_manifest(&text) {
        let (diagnostics, conditions) = check_text(path, &text);
        return vec![Unit {
            name: path.to_path_buf(),
            diagnostics,
            conditions,
            verdict: "ok",
        }];
    }
    let entries = match configmap::entries(&text) {
        Ok(e) => e,
        Err((pos, message)) => {
            return vec![Unit {
                name: path.to_path_buf(),
                diagnostics: vec![Diagnostic {
                    level: Level::Error,
                    file: path.to_path_buf(),
                    pos: Some(pos),
                    key: String::new(),
                    message,
                    help: None,
                    unknown_key: false,
                }],
                conditions: Vec::new(),
                verdict: "ok",
            }];
        }
    };
    if entries.is_empty() {
        return vec![Unit {
            name: path.to_path_buf(),
            diagnostics: vec![Diagnostic {
                level: Level::Error,
                file: path.to_path_buf(),
                pos: None,
                key: String::new(),
                message: "no ConfigMap with data in this manifest".into(),
                help: None,
                unknown_key: false,
            }],
            conditions: Vec::new(),
            verdict: "ok",
        }];
    }
    entries
        .into_iter()
        .map(|e| {
            let name = PathBuf::from(format!("{}:{}", path.display(), e.key));
            if !e.text.trim_start().starts_with('{') {
                // Plugin scripts and other files ride along in the same map.
                return Unit {
                    name,
                    diagnostics: Vec::new(),
                    conditions: Vec::new(),
                    verdict: "not a JSON config; skipped",
                };
            }
            let (mut diagnostics, conditions) = check_text(&name, &e.text);
            for d in &mut diagnostics {
                d.pos = d.pos.map(|p| e.manifest_pos(p));
            }
            Unit {
                name,
                diagnostics,
                conditions,
                verdict: "ok",
            }
        })
        .collect()
}

/// The diagnostics of one JSON config, whatever monitor it configures, and
/// the condition types it declares.
fn check_text(path: &Path, text: &str) -> (Vec<Diagnostic>, Vec<String>) {
    fn types(c: &[config::ConditionDecl]) -> Vec<String> {
        c.iter().map(|d| d.type_.clone()).collect()
    }
    match config::kind_of(text) {
        Kind::SystemLog => {
            let c = config::syslog::check(path, text);
            let t = c
                .config
                .as_ref()
                .map_or_else(Vec::new, |c| types(&c.conditions));
            (c.diagnostics, t)
        }
        Kind::Custom => {
            let c = config::custom::check(path, text);
            let t = c
                .config
                .as_ref()
                .map_or_else(Vec::new, |c| types(&c.conditions));
            (c.diagnostics, t)
        }
        Kind::SystemStats => (config::stats::check(path, text).diagnostics, Vec::new()),
        Kind::ExternalExporter => (config::exporter::check(path, text).diagnostics, Vec::new()),
        Kind::TaintPolicy => (
            config::taint_policy::check(path, text).diagnostics,
            Vec::new(),
        ),
        Kind::XidPolicy => (
            config::xid_policy::check(path, text).diagnostics,
            Vec::new(),
        ),
        Kind::External | Kind::Unknown(_) => {
            let c = config::external::check(path, text);
            let t = c
                .config
                .as_ref()
                .map_or_else(Vec::new, |c| types(&c.conditions));
            (c.diagnostics, t)
        }
    }
}

/// Every diagnostic for one file (all its configs, for a manifest).
pub fn check(path: &Path) -> Vec<Diagnostic> {
    units(path)
        .into_iter()
        .flat_map(|u| u.diagnostics)
        .collect()
}
