#!/usr/bin/env bash
# Benchmarks against real peers (release build); prints a markdown table. Usage: scripts/bench.sh ssh|vnc [options]
# Options: --window 30 --warmup 5 --repeats 3 --sessions 1,5,20 --idle 100,1000 (see portico-bench --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh >&2
export PORTICO_BENCH_RELEASE=1
cargo build --release --locked -p portico --bin portico -p portico-tests --bin portico-bench >&2
exec ./target/release/portico-bench "$@"
