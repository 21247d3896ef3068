#!/usr/bin/env bash
# The whole test suite: builds the Rust sample guests (when Debian's
# rustc-web is installed; CI installs it and requires them), the `shoal`
# binary the integration tests start, then runs every crate's tests (unit
# and integration) and a smoke run of the benchmarks. One cargo profile
# (dev), so nothing builds twice.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ]; then
  scripts/build-samples.sh
  export SHOAL_REQUIRE_RUST_SAMPLES=1
elif [ "${SHOAL_REQUIRE_RUST_SAMPLES:-}" = 1 ]; then
  echo "test: the Rust samples are required but rustc-web is not installed" >&2
  exit 1
else
  echo "test: rustc-web not installed; the Rust sample tests will skip (the WAT samples still run)" >&2
fi
cargo build --locked --bin shoal
cargo test --locked --workspace --all-targets "$@"
