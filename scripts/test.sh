#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs its dependencies, checks formatting and lints,
# runs every fuzz target briefly, then every test (unit tests and the integration tests against real sshd,
# PostgreSQL and Chromium).
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1 PORTICO_TEST=1

./scripts/install-test-deps.sh

echo "== workspace image rootfs (built once per machine, cached; the tests import it into their engines)"
./scripts/build-workspace-image.sh --rootfs-only

echo "== web client: typecheck and build"
(cd web-client && npm run --silent typecheck && npm run --silent build)

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

echo "== cargo test"
cargo test --workspace --locked -- "$@"
