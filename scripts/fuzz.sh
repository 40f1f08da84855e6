#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer with AddressSanitizer) of every parser of network bytes:
# runs each target of fuzz/fuzz_targets/ for SECONDS (default 1800, the long run), one at a time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1, set for the fuzz build only (its own crate and target dir,
# fuzz/target), lets stable rustc take the -Z sanitizer flags cargo-fuzz passes. Each target starts from its
# committed corpus (fuzz/corpus/TARGET, read only here) plus what earlier runs found (fuzz/target/corpus/TARGET,
# not committed). FUZZ_UPDATE_CORPUS=1 merges the findings into the committed corpus, minimized.
# A crash, a leak, an input slower than 10 s or an allocation over 1 GiB fails the target: the input is in
# fuzz/artifacts/TARGET/, and it belongs in a regression test beside the code it broke. The script goes on
# with the other targets and exits non-zero at the end.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-1800}
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
# A C++ compiler builds libFuzzer itself (libfuzzer-sys).
if ! command -v c++ >/dev/null; then
    echo "fuzz: no c++ compiler (Debian: apt-get install g++)" >&2
    exit 1
fi

export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir .)
fi

start=$(date +%s)
cargo fuzz build --fuzz-dir .
echo "== fuzz build: $(($(date +%s) - start)) s"

failed=()
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs} s"
    mkdir -p "target/corpus/$t" "corpus/$t"
    log="target/fuzz-$t.log"
    if ! cargo fuzz run --fuzz-dir . "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        failed+=("$t")
        continue
    fi
    # The last status line (executions, coverage) and the speed.
    grep -E '^#[0-9]+' "$log" | tail -n 1
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" | tr '\n' ' '
    echo
    if [ "${FUZZ_UPDATE_CORPUS:-0}" = 1 ]; then
        # The smallest set of inputs with the edge coverage of the committed corpus and this run's findings
        # (hit counts ignored: that keeps the committed corpora at a few hundred KB).
        rm -rf "target/min/$t" && mkdir -p "target/min/$t"
        "target/$(rustc -vV | sed -n 's/^host: //p')/release/$t" -merge=1 -set_cover_merge=1 -use_counters=0 \
            -timeout=10 "target/min/$t" "corpus/$t" "target/corpus/$t" >"target/min-$t.log" 2>&1
        rm -rf "corpus/$t" && mv "target/min/$t" "corpus/$t"
        echo "corpus/$t: $(find "corpus/$t" -type f | wc -l) inputs"
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${failed[*]} failed; the inputs are in fuzz/artifacts/" >&2
    exit 1
fi
echo "== fuzz: ${#targets[@]} targets, ${secs} s each, no crash"
