//! ticker: "tick N" once a second, forever.
use std::time::Duration;

fn main() {
    for n in 0u64.. {
        println!("tick {n}");
        std::thread::sleep(Duration::from_secs(1));
    }
}
