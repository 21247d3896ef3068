//! counter: counts its own starts in a file meant to outlive it — the
//! sample for persistent volumes. Reads the number in $COUNT_FILE (default
//! /data/count, 0 if absent), writes it back plus one, prints "start N",
//! then stays up until stopped.
use std::time::Duration;

fn main() {
    let path = std::env::var("COUNT_FILE").unwrap_or_else(|_| "/data/count".into());
    let before = match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("counter: {path} holds {text:?}, not a count: {e}");
                std::process::exit(2);
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            eprintln!("counter: reading {path}: {e}");
            std::process::exit(2);
        }
    };
    let n = before + 1;
    if let Err(e) = std::fs::write(&path, n.to_string()) {
        eprintln!("counter: writing {path}: {e}");
        std::process::exit(2);
    }
    println!("start {n}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
