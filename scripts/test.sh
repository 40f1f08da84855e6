#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs its dependencies, checks formatting and lints,
# runs every fuzz target briefly, then every test (unit tests and the integration tests against real sshd,
# PostgreSQL and Chromium).
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1 PORTICO_TEST=1
# A clean CI clone builds once: incremental compilation data would only cost disk.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

./scripts/install-test-deps.sh

echo "== workspace image rootfs (built once per machine, cached; the tests import it into their engines)"
./scripts/build-workspace-image.sh --rootfs-only
./scripts/build-workspace-image.sh --flavor browser --rootfs-only

echo "== web client: typecheck, build, and its codec against the shared wire-protocol vectors"
(cd web-client && npm run --silent typecheck && npm run --silent build && npm test --silent)

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# A smoke run of every fuzz target (the long run is scripts/fuzz.sh); skipped when a test filter is given.
if [ $# -eq 0 ]; then
    echo "== fuzz smoke run"
    ./scripts/fuzz.sh 15
fi

# The browser on a shaped link measures latency: it runs alone, after the others, on a release build.
LINK_TEST=browser::vnc_text_scrolling_on_a_4_mbit_link_stays_within_the_latency_target
echo "== cargo test"
if [ $# -eq 0 ]; then
    cargo test --workspace --locked -- --skip "$LINK_TEST"
    echo "== the browser on a shaped link, alone (it builds the release binary it measures)"
    cargo test --locked -q -p portico-tests --test integration -- --exact "$LINK_TEST"
else
    cargo test --workspace --locked -- "$@"
fi

# The 5-minute soak (the hour: scripts/bench.sh soak --minutes 60): sessions of every kind opening and
# closing with API traffic; fails when memory, threads, fds or the database do not come back or keep
# growing. Debug build (already built by the tests); skipped when a test filter is given.
if [ $# -eq 0 ]; then
    echo "== soak, 5 minutes"
    cargo run --locked -q -p portico-tests --bin portico-bench -- soak --minutes 5
fi
