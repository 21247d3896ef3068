//! crasher: complains and exits 3 (a component can only say "failed": 1).
fn main() {
    eprintln!("crasher: giving up with status 3");
    std::process::exit(3);
}
