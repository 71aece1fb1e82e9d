//! The fuzz harnesses of `fuzz/` on the stable toolchain: every corpus file of
//! every target, then a batch of pseudo-random inputs, must keep the invariants.

use std::path::Path;

use isthmus_core::rng::Rng;
use isthmus_tests::fuzzing;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file"))
        .collect()
}

fn random_inputs(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let alphabet = b"<>/='\"abdgmstv:;!?[]-&#@ \r\n\x00\x01\xc3\xa9SIP20.";
    (0..n)
        .map(|_| {
            let len = (rng.next_u64() % 400) as usize;
            (0..len)
                .map(|_| {
                    if rng.next_u64().is_multiple_of(4) {
                        rng.next_u64() as u8
                    } else {
                        alphabet[(rng.next_u64() % alphabet.len() as u64) as usize]
                    }
                })
                .collect()
        })
        .collect()
}

fn run(target: &str, harness: fn(&[u8]), seed: u64) {
    let files = corpus(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for f in &files {
        harness(f);
    }
    for input in random_inputs(seed, 500) {
        harness(&input);
    }
}

#[test]
fn xml_reader_corpus() {
    run("xml_reader", fuzzing::xml_reader, 1);
}

#[test]
fn sip_codec_corpus() {
    run("sip_codec", fuzzing::sip_codec, 2);
}

#[test]
fn gateway_corpus() {
    run("gateway", fuzzing::gateway, 3);
}
