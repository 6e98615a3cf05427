fn main() {
    eprintln!("wshub: server coming with the reactor issue");
}
