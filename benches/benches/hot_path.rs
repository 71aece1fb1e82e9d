//! criterion benches: the stanza hot path both ways with raw quick-xml
//! tokenization of the same bytes as the baseline, SIP parsing, NOTIFY → presence,
//! and whole in-memory s2s handshakes.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use isthmus_benches::*;
use isthmus_core::config::{Negotiation, SaslMode, TlsMode};
use isthmus_core::jid::Jid;
use isthmus_core::sip::{SipLimits, SipMessage};
use isthmus_tests::scenario::{run_pair, PairSetup, Pki};

fn hot_path(c: &mut Criterion) {
    let config = config();
    let mut g = c.benchmark_group("stanza");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw quick-xml tokenization (baseline)", |b| {
        b.iter(|| tokenize(std::hint::black_box(MESSAGE.as_bytes())))
    });
    let mut buf = Vec::new();
    g.bench_function(
        "quick-xml stream tokenization, attributes split (baseline)",
        |b| b.iter(|| tokenize_stream(std::hint::black_box(MESSAGE.as_bytes()), &mut buf)),
    );
    let mut reader = open_reader();
    g.bench_function("s2s message -> SIP MESSAGE", |b| {
        b.iter(|| {
            inbound(
                &mut reader,
                &config,
                std::hint::black_box(MESSAGE.as_bytes()),
            )
        })
    });
    let sip = sip_message_bytes();
    g.bench_function(
        "raw quick-xml tokenization of the stanza it becomes (baseline)",
        |b| {
            let stanza = outbound(&sip).unwrap_or_default();
            b.iter(|| tokenize(std::hint::black_box(stanza.as_bytes())))
        },
    );
    g.bench_function(
        "quick-xml stream tokenization of the stanza it becomes, attributes split (baseline)",
        |b| {
            let stanza = outbound(&sip).unwrap_or_default();
            b.iter(|| tokenize_stream(std::hint::black_box(stanza.as_bytes()), &mut buf))
        },
    );
    g.bench_function("SIP MESSAGE -> s2s message", |b| {
        let mut text = String::new();
        b.iter(|| outbound_into(std::hint::black_box(&sip), &mut text))
    });
    let notify = notify_bytes();
    let from = Jid::parse("juliet@sip.example").unwrap_or_else(|_| unreachable!());
    let to = Jid::parse("romeo@xmpp.example").unwrap_or_else(|_| unreachable!());
    g.bench_function("NOTIFY/PIDF -> presence", |b| {
        b.iter(|| notify_to_presence(std::hint::black_box(&notify), &from, &to))
    });
    let mut whole = whole::WholeGateway::xmpp_to_sip();
    g.bench_function(
        "whole gateway: s2s message -> SIP MESSAGE, its 200 back",
        |b| b.iter(|| whole.inbound(std::hint::black_box(MESSAGE.as_bytes()))),
    );
    let mut whole = whole::WholeGateway::sip_to_xmpp();
    g.bench_function("whole gateway: SIP MESSAGE -> s2s message, 200 sent", |b| {
        b.iter(|| whole.outbound())
    });
    g.bench_function("SIP parse", |b| {
        b.iter(|| SipMessage::parse(std::hint::black_box(&sip), &SipLimits::default()))
    });
    g.finish();
}

fn handshakes(c: &mut Criterion) {
    let pki = Pki::new();
    let mut g = c.benchmark_group("s2s handshake (both gateways, in memory, one message)");
    g.sample_size(10);
    for (name, row) in [
        (
            "tls + sasl external",
            Negotiation {
                tls: TlsMode::Required,
                sasl: SaslMode::Required,
                dialback: false,
            },
        ),
        (
            "dialback over tcp",
            Negotiation {
                tls: TlsMode::NotSupported,
                sasl: SaslMode::NotSupported,
                dialback: true,
            },
        ),
    ] {
        g.bench_with_input(BenchmarkId::from_parameter(name), &row, |b, row| {
            b.iter(|| run_pair(&pki, *row, *row, &PairSetup::default()).delivered)
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = hot_path, handshakes
}
criterion_main!(benches);
