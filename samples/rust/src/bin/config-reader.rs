//! config-reader: prints its environment (sorted KEY=VALUE lines), then the
//! files named in $CONFIG_FILES (comma-separated, default "message") from
//! the directory $CONFIG_DIR (default /etc/config), as "name: contents".
use std::collections::BTreeMap;

fn main() {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    for (k, v) in &env {
        println!("{k}={v}");
    }
    let dir = env.get("CONFIG_DIR").map_or("/etc/config", String::as_str);
    let files = env.get("CONFIG_FILES").map_or("message", String::as_str);
    let mut failed = false;
    for name in files.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let path = format!("{dir}/{name}");
        match std::fs::read_to_string(&path) {
            Ok(text) => println!("{name}: {}", text.trim_end()),
            Err(e) => {
                eprintln!("config-reader: {path}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(2);
    }
}
