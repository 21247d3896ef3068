//! Builds the demo's Wasm modules from the WAT sources in `samples/wat`,
//! so `shoal up --demo` works on a machine with no guest toolchain.

use std::path::PathBuf;

fn main() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/wat");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", src.display());
    for name in [
        "hello",
        "ticker",
        "crasher",
        "hog",
        "spinner",
        "config-reader",
    ] {
        let path = src.join(format!("{name}.wat"));
        println!("cargo:rerun-if-changed={}", path.display());
        let wasm = wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::write(out.join(format!("{name}.wasm")), wasm).expect("write wasm");
    }
}
