//! Protocol-core throughput: handshakes per second (initiation create +
//! consume, response create + consume) and transport seal/open at 64, 512
//! and 1420 bytes. Run: `cargo bench -p wg-appliance --bench protocol`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand_core::OsRng;
use wg_appliance::keys::PrivateKey;
use wg_appliance::noise::{open_initiation, Handshake, Identity, Tai64N};
use wg_appliance::session::{ReceivingKey, SendingKey};

fn handshake(c: &mut Criterion) {
    let i = Identity::new(&PrivateKey::generate());
    let r = Identity::new(&PrivateKey::generate());
    let mut hi = Handshake::new(&i, *r.public_key(), None);
    let mut hr = Handshake::new(&r, *i.public_key(), None);
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));

    let mut secs = 0u64;
    g.bench_function("initiation_create", |b| {
        b.iter(|| hi.create_initiation(&mut OsRng, Tai64N::from_unix(1, 0), 1, Duration::ZERO))
    });

    // Consume needs ever-newer timestamps and a monotonic time past the flood limit.
    g.bench_function("initiation_consume", |b| {
        b.iter_batched(
            || {
                secs += 1;
                let m = hi
                    .create_initiation(&mut OsRng, Tai64N::from_unix(secs, 0), 1, Duration::ZERO)
                    .unwrap();
                (m, secs)
            },
            |(m, at)| {
                let o = open_initiation(&r, black_box(&m)).unwrap();
                hr.consume_initiation(o, Duration::from_secs(at)).unwrap();
            },
            criterion::BatchSize::SmallInput,
        )
    });

    g.bench_function("full_handshake", |b| {
        b.iter(|| {
            secs += 1;
            let m = hi
                .create_initiation(&mut OsRng, Tai64N::from_unix(secs, 0), 1, Duration::ZERO)
                .unwrap();
            let o = open_initiation(&r, &m).unwrap();
            hr.consume_initiation(o, Duration::from_secs(secs)).unwrap();
            let (resp, _) = hr.create_response(&mut OsRng, 2, Duration::ZERO).unwrap();
            black_box(hi.consume_response(&resp).unwrap());
        })
    });
    g.finish();
}

fn transport(c: &mut Criterion) {
    let key = [7u8; 32];
    let tx = SendingKey::new(&key, 1);
    let rx = ReceivingKey::new(&key, 1);
    let mut g = c.benchmark_group("transport");
    for size in [64usize, 512, 1420] {
        let payload = vec![0xa5u8; size];
        let mut msg = Vec::with_capacity(size + 64);
        g.throughput(Throughput::Bytes(size as u64));
        let mut counter = 0u64;
        g.bench_with_input(BenchmarkId::new("encrypt", size), &payload, |b, p| {
            b.iter(|| {
                counter += 1;
                tx.seal(counter, black_box(p), 1420, &mut msg).unwrap();
            })
        });
        tx.seal(1, &payload, 1420, &mut msg).unwrap();
        let mut out = Vec::with_capacity(size + 16);
        g.bench_with_input(BenchmarkId::new("decrypt", size), &msg, |b, m| {
            b.iter(|| rx.open(black_box(m), &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = handshake, transport
}
criterion_main!(benches);
