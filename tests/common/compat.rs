// Also the library's `compat_dir` module for the unit tests in src/ (by
// `#[path]` from src/lib.rs), so it names nothing outside std.

use std::path::PathBuf;

/// The variable naming the directory of upstream files the compat tests
/// check against: upstream NPD's configs (`npd-configs/`) and real GPU
/// readings (`fixtures/`). They are not ours, so the repository has no copy.
pub const COMPAT_DIR_VAR: &str = "NPD_EXT_COMPAT_DIR";

/// `rel` under the compat directory. Panics while the variable is unset or
/// names no directory: a compat test run without the files must fail, never
/// pass.
pub fn upstream(rel: &str) -> PathBuf {
    let Some(dir) = std::env::var_os(COMPAT_DIR_VAR).filter(|d| !d.is_empty()) else {
        panic!(
            "set {COMPAT_DIR_VAR} to the directory holding upstream's npd-configs/ and fixtures/ \
             (e.g. {COMPAT_DIR_VAR}=$PWD/../shared cargo test -- --ignored compat)"
        );
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.is_dir(),
        "{COMPAT_DIR_VAR}={} is not a directory; set it to the one holding npd-configs/ and fixtures/",
        dir.display()
    );
    dir.join(rel)
}
