#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs its dependencies, checks formatting and lints,
# then runs every test (unit tests and the integration tests against real sshd, PostgreSQL and Chromium).
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

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked -- "$@"
