//! One hot path in a loop, for instruction-level profiling where criterion's
//! harness would get in the way:
//! `valgrind --tool=callgrind target/release/examples/prof in 2200`, less the same at
//! 200, over 10,000 (the release build is linked whole, so the paths are inlined here;
//! see the README).
//! Paths: `tok` and `stok` (the quick-xml baselines of the partner's stanza), `otok`
//! (the stream baseline of the stanza `out` writes), `in` and `out` (the pipelines),
//! `win` and `wout` (the whole gateway).
//! Runs five rounds of N and prints the time per operation of each.

use isthmus_benches::*;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let n: u32 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let c = config();
    let mut r = open_reader();
    let sip = sip_message_bytes();
    let mut w = whole::WholeGateway::xmpp_to_sip();
    let mut o = whole::WholeGateway::sip_to_xmpp();
    let mut buf = Vec::new();
    let produced = outbound(&sip).unwrap_or_default();
    let mut text = String::new();
    for round in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..n {
            match which.as_str() {
                "in" => drop(std::hint::black_box(inbound(
                    &mut r,
                    &c,
                    MESSAGE.as_bytes(),
                ))),
                "tok" => drop(std::hint::black_box(tokenize(MESSAGE.as_bytes()))),
                "stok" => drop(std::hint::black_box(tokenize_stream(
                    MESSAGE.as_bytes(),
                    &mut buf,
                ))),
                "otok" => drop(std::hint::black_box(tokenize_stream(
                    produced.as_bytes(),
                    &mut buf,
                ))),
                "out" => drop(std::hint::black_box(outbound_into(&sip, &mut text))),
                "win" => drop(std::hint::black_box(w.inbound(MESSAGE.as_bytes()))),
                "wout" => drop(std::hint::black_box(o.outbound())),
                other => {
                    eprintln!("unknown path {other:?}: tok, stok, otok, in, out, win or wout");
                    std::process::exit(2);
                }
            }
        }
        println!("round {round}: {:?} per op", t.elapsed() / n);
    }
}
