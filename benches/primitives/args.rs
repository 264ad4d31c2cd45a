//! Command-line options (see the module doc of main.rs): `--quick` and
//! `--markdown`; libtest's flags, which `cargo bench` passes, are ignored.

use std::time::Duration;

pub struct Config {
    /// Time per primitive (test + baseline, all repeats).
    pub budget: Duration,
    pub markdown: bool,
}

/// Reads the options from the command line.
pub fn config() -> Config {
    let mut quick = false;
    let mut markdown = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--markdown" => markdown = true,
            // `cargo bench` passes --bench; ignore the rest of libtest's flags.
            _ => {}
        }
    }
    Config {
        budget: if quick {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(2)
        },
        markdown,
    }
}
