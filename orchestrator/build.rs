//! Builds the demo's Wasm modules from the WAT sources in `samples/wat`,
//! so `shoal up --demo` works on a machine with no guest toolchain. The
//! HTTP sample is a component: its core module is wrapped with the WIT in
//! `samples/wit`.

use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples");
    let src = root.join("wat");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", src.display());
    for name in [
        "hello",
        "ticker",
        "crasher",
        "hog",
        "spinner",
        "config-reader",
        "journal",
    ] {
        let path = src.join(format!("{name}.wat"));
        println!("cargo:rerun-if-changed={}", path.display());
        let wasm = wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::write(out.join(format!("{name}.wasm")), wasm).expect("write wasm");
    }
    let component = http_component(
        &src.join("http-hello.wat"),
        &root.join("wit/http-hello.wit"),
        "http-hello",
    )
    .unwrap_or_else(|e| panic!("http-hello: {e:#}"));
    std::fs::write(out.join("http-hello.wasm"), component).expect("write component");
}

/// A core module plus the WIT world it implements → a component.
fn http_component(wat: &Path, wit: &Path, world: &str) -> anyhow::Result<Vec<u8>> {
    println!("cargo:rerun-if-changed={}", wat.display());
    println!("cargo:rerun-if-changed={}", wit.display());
    let mut module = wat::parse_file(wat)?;
    let text = std::fs::read_to_string(wit)?;
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_source(&wit.display().to_string(), &text)?;
    let world = resolve.select_world(&[package], Some(world))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )?;
    wit_component::ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()
}
