#!/usr/bin/env bash
# The whole test suite: builds the `shoal` binary the integration tests
# start, then runs every crate's tests (unit and integration) and a smoke
# run of the benchmarks. One cargo profile (dev), so nothing builds twice.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bin shoal
cargo test --locked --workspace --all-targets "$@"
