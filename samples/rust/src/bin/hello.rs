//! hello: one line, exit 0.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("Hello from a Rust guest (argv: {args:?})");
}
