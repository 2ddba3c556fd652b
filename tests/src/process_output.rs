//! A child process's stderr read line by line on a thread of its own (so the child never
//! blocks on a full pipe), and waiting for a line.

use std::io::BufRead;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The lines `child` writes to its stderr (piped), as they come.
pub fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("the child's stderr is piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `within` for a line containing every one of `needles`, and returns it;
/// panics with the lines seen meanwhile when none comes.
pub fn wait_for_line(lines: &mpsc::Receiver<String>, needles: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no line with {needles:?} within {within:?}; saw:\n{}", seen.join("\n"));
}
