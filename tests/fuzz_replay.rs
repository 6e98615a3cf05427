//! Replays the fuzz corpora on stable: every committed seed (`fuzz/corpus/TARGET/*`) and every
//! past crash (`fuzz/regressions/TARGET/*`) goes through the same check functions the fuzz
//! targets run, so CI guards against regressions without nightly or libFuzzer.

#[allow(dead_code)]
#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> =
        entries.map(|e| e.expect("readable directory entry").path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths
}

fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files(&fuzz.join("corpus").join(target));
    assert!(!corpus.is_empty(), "no committed corpus for {target}");
    let regressions = files(&fuzz.join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).expect("readable corpus file");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: {} input(s) fail: {failed:#?}", failed.len());
}

#[test]
fn frame_parser_corpus_and_regressions() {
    replay("frame_parser", checks::check_frame_parser);
}

#[test]
fn handshake_corpus_and_regressions() {
    replay("handshake", checks::check_handshake);
}

#[test]
fn connection_corpus_and_regressions() {
    replay("connection", checks::check_connection);
}

#[test]
fn reader_reads_zeros_past_the_end() {
    let mut r = checks::Reader::new(&[1, 2, 3]);
    assert_eq!(r.u16(), 0x0201);
    assert_eq!(r.u16(), 0x0003);
    assert!(r.is_empty());
    assert_eq!(r.blob(10), b"");
}

#[test]
fn chunks_cover_the_stream() {
    let stream: Vec<u8> = (0..50).collect();
    for sizes in [&[][..], &[0], &[1], &[3, 0, 7], &[255]] {
        let pieces = checks::chunks(&stream, sizes);
        assert_eq!(pieces.concat(), stream, "sizes {sizes:?}");
    }
}

#[allow(dead_code)]
#[path = "../fuzz/src/hub_checks.rs"]
mod hub_checks;

#[test]
fn hub_message_corpus_and_regressions() {
    replay("hub_message", hub_checks::check_hub_message);
}

#[allow(dead_code)]
#[path = "../fuzz/src/backplane_checks.rs"]
mod backplane_checks;

#[test]
fn backplane_corpus_and_regressions() {
    replay("backplane", backplane_checks::check_backplane);
}

#[test]
fn backplane_seed_reaches_delivery() {
    // The checks on delivered messages run only if a seed gets that far: the handshake seed
    // delivers one publish and one broadcast from another node.
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/backplane/handshake_then_messages");
    assert_eq!(backplane_checks::run_backplane(&fs::read(fuzz).unwrap()), 2);
}

#[test]
fn backplane_history_seed_reaches_delivery() {
    // History kept in Redis: the seed loads the scripts, appends, recovers two entries and
    // delivers one numbered message (the next one is garbage).
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/backplane/history_in_redis");
    assert_eq!(backplane_checks::run_backplane(&fs::read(fuzz).unwrap()), 1);
}

#[allow(dead_code)]
#[path = "../fuzz/src/config_checks.rs"]
mod config_checks;

#[test]
fn config_corpus_and_regressions() {
    replay("config", config_checks::check_config);
}

#[allow(dead_code)]
#[path = "../fuzz/src/tls_checks.rs"]
mod tls_checks;

#[test]
fn tls_pem_corpus_and_regressions() {
    replay("tls_pem", tls_checks::check_tls_pem);
}

#[allow(dead_code)]
#[path = "../fuzz/src/http_checks.rs"]
mod http_checks;

// The replay measures what the fuzz target measures: the largest allocation before a body.
#[global_allocator]
static ALLOC: http_checks::CountingAlloc = http_checks::CountingAlloc;

#[test]
fn http_request_corpus_and_regressions() {
    replay("http_request", http_checks::check_http_request);
}

#[test]
fn http_request_seeds_reach_their_answers() {
    // The delivery and allocation checks run only if seeds get that far.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/http_request");
    for (seed, expected) in [
        ("publish_local", (Some(200), 2, 0)),
        ("publish_pieces_continue", (Some(200), 2, 1)),
        ("publish_history", (Some(200), 1, 0)),
        ("broadcast_key", (Some(200), 4, 0)),
        ("publish_remote_no_key", (Some(403), 0, 0)),
        ("publish_chunked", (Some(411), 0, 0)),
        ("publish_huge_length", (None, 0, 0)),
        ("head_metrics", (Some(200), 0, 0)),
    ] {
        let data = fs::read(dir.join(seed)).unwrap();
        assert_eq!(http_checks::run_http_request(&data), expected, "{seed}");
    }
}

#[test]
fn the_allocation_counter_is_installed_and_counts() {
    let (_, largest) = http_checks::largest_allocation(|| std::hint::black_box(vec![0u8; 5000]));
    assert!(largest.is_some_and(|n| n >= 5000), "{largest:?}");
}
