//! A component of the `wasi:cli/command` world, not a Broadcaster backend.
fn main() {
    println!("hello from a command component");
}
