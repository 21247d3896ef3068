#!/usr/bin/env bash
# Builds shoal and runs `shoal up --demo`: the API server and one node in
# one process, with the sample Wasm pods applied. Stays in the foreground
# (Ctrl-C stops it). Data lives in ${SHOAL_DATA_DIR:-./shoal-data}; the API
# listens on ${SHOAL_LISTEN:-127.0.0.1:6443}.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin shoal
exec target/release/shoal up --demo \
  --data-dir "${SHOAL_DATA_DIR:-./shoal-data}" \
  --listen "${SHOAL_LISTEN:-127.0.0.1:6443}"
