#!/usr/bin/env bash
# Builds the Rust sample guests from source with Debian's rustc-web (see
# ../shared/GUESTS.md): WASI preview-1 modules into target/wasm-samples/p1
# and WASI 0.2 components (commands and the wasi:http handlers) into
# target/wasm-samples/p2.
# Needs: apt-get install rustc-web cargo-web rust-web-src lld-22 wasi-libc
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ]; then
  echo "build-samples: Debian's rustc-web is missing (apt-get install rustc-web cargo-web rust-web-src lld-22 wasi-libc)" >&2
  exit 1
fi
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
       RUSTFLAGS="-C link-self-contained=no -L native=/usr/lib/wasm32-wasi"
# The main toolchain's settings must not leak into the guest build.
unset CARGO_BUILD_TARGET CARGO_TARGET_DIR RUSTUP_TOOLCHAIN
cd samples/rust
# The wasi:http handlers are built both ways: as WASI 0.2 components, and as
# preview-1 core modules that a node wraps with the proxy adapter at load.
/usr/bin/cargo build -q -Zbuild-std=std,panic_abort --target wasm32-wasip1 --release --workspace
/usr/bin/cargo build -q -Zbuild-std=std,panic_abort --target wasm32-wasip2 --release --workspace
for kind in p1 p2; do
  mkdir -p "$root/target/wasm-samples/$kind"
  for bin in hello ticker crasher hog config-reader counter; do
    cp "target/wasm32-wasi$kind/release/$bin.wasm" "$root/target/wasm-samples/$kind/$bin.wasm"
  done
done
for lib in http-hello http-caller; do
  for kind in p1 p2; do
    cp "target/wasm32-wasi$kind/release/${lib//-/_}.wasm" "$root/target/wasm-samples/$kind/$lib.wasm"
  done
done
echo "build-samples: $(ls "$root"/target/wasm-samples/p1 | wc -l) modules and $(ls "$root"/target/wasm-samples/p2 | wc -l) components in target/wasm-samples"
