#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each) and fails on
# the first crash. Needs cargo-fuzz (`cargo install cargo-fuzz`); on a
# stable toolchain it runs with RUSTC_BOOTSTRAP=1 and no sanitizer.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
for target in kmsg_record config_load plugin_status; do
  mkdir -p "fuzz/corpus/$target"
  echo "== $target for ${secs}s"
  cargo fuzz run --sanitizer none "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -max_len=8192 -timeout=10 -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|.*panicked|SUMMARY|Done)' || true
  if ls "fuzz/artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "crash in $target: see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "fuzz: no crash"
