// build-std brings no libc start files: link wasi-libc's command entry.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("wasm32-wasi") {
        println!("cargo:rustc-link-arg-bins=/usr/lib/wasm32-wasi/crt1-command.o");
    }
}
