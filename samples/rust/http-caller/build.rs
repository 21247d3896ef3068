// build-std brings no libc start files: link wasi-libc's reactor entry.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("wasm32-wasi") {
        println!("cargo:rustc-link-arg-cdylib=/usr/lib/wasm32-wasi/crt1-reactor.o");
        // Heap room from the start: see http-hello/build.rs.
        println!("cargo:rustc-link-arg-cdylib=--initial-memory=2097152");
    }
}
