// build-std brings no libc start files: link wasi-libc's reactor entry.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("wasm32-wasi") {
        println!("cargo:rustc-link-arg-cdylib=/usr/lib/wasm32-wasi/crt1-reactor.o");
        // Room for the heap from the start (wasi-libc's malloc uses the
        // space up to the initial end before growing): a handler that never
        // grows its memory spares the host two mprotect calls per request.
        println!("cargo:rustc-link-arg-cdylib=--initial-memory=2097152");
    }
}
