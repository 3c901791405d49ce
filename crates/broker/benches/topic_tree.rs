//! Micro-benchmarks of the subscription tree (`tern_broker::topic_tree`) at
//! one million subscriptions.
//!
//! `cargo bench -p tern-broker` (about 20 s) builds the tree once, in 1-2 s,
//! and prints its build time and memory (RSS growth), then measures:
//!
//! - `match/*`: one `for_each_match` per iteration, i.e. the routing cost of
//!   one PUBLISH, for topics that match 1, 101, 0 subscriptions and one
//!   shared group;
//! - `insert/new_device`, `remove/new_device`: the cost of one SUBSCRIBE or
//!   UNSUBSCRIBE of a filter that adds (removes) its own branch below an
//!   existing site, in the full tree. The tree stays at 1M.
//!
//! The tree (1,000,000 subscriptions):
//!
//! | subscriptions | filter                                     | subscriber       |
//! |---------------|--------------------------------------------|------------------|
//! | 891,000       | `site/{s}/dev/{d}/+/{metric}`, 9 metrics   | `app-{s}-{d}`    |
//! | 99,000        | `site/{s}/dev/{d}/cmd/#`                   | `dev-{s}-{d}`    |
//! | 1,000         | `site/{s}/#`, sites 0..10, 100 per site    | `logger-{s}-{i}` |
//! | 9,000         | `$share/ingest/site/{s}/dev/+/event/+`, 90 members per site | `ingest-{i}` |
//!
//! with 100 sites `s` of 990 devices `d` (99,000 devices).

use std::fs;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tern_broker::testing::{Matched, TopicTree};
use tern_codec::ByteStr;

const SITES: u32 = 100;
const DEVICES_PER_SITE: u32 = 990;
const METRICS: [&str; 9] = [
    "temp", "humidity", "pressure", "co2", "voltage", "current", "power", "rssi", "uptime",
];
/// Sites with site-wide `#` subscribers, and how many each has.
const LOGGED_SITES: u32 = 10;
const LOGGERS_PER_SITE: u32 = 100;
const INGEST_MEMBERS_PER_SITE: u32 = 90;

const TOTAL: usize = (SITES * DEVICES_PER_SITE) as usize * (METRICS.len() + 1)
    + (LOGGED_SITES * LOGGERS_PER_SITE) as usize
    + (SITES * INGEST_MEMBERS_PER_SITE) as usize;

/// The topics matched, what each must match (subscriptions + shared groups).
const TOPICS: [(&str, &str, usize); 4] = [
    // A site without loggers: its device's `+/temp` filter only.
    ("one", "site/77/dev/420/sensor/temp", 1),
    // A logged site: the device's filter and the site's 100 loggers.
    ("hundred", "site/7/dev/420/sensor/temp", 101),
    // Walks as deep as a real reading, but no metric `noise` is subscribed.
    ("none", "site/77/dev/420/sensor/noise", 0),
    // An event: the site's `ingest` group (the broker then picks one member).
    ("shared_group", "site/77/dev/420/event/alarm", 1),
];

/// This process's resident set size in bytes, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The tree described at the top. Client ids are allocated once per client
/// and shared by its subscriptions, as the broker's sessions share them.
fn build() -> TopicTree<u32> {
    let mut tree = TopicTree::new();
    let mut value = 0u32;
    let mut insert = |tree: &mut TopicTree<u32>, filter: &str, group, client: &ByteStr| {
        value += 1;
        assert!(tree.insert(filter, group, client, value).is_none());
    };
    for s in 0..SITES {
        for d in 0..DEVICES_PER_SITE {
            let app = ByteStr::from(format!("app-{s}-{d}"));
            for metric in METRICS {
                insert(
                    &mut tree,
                    &format!("site/{s}/dev/{d}/+/{metric}"),
                    None,
                    &app,
                );
            }
            let device = ByteStr::from(format!("dev-{s}-{d}"));
            insert(&mut tree, &format!("site/{s}/dev/{d}/cmd/#"), None, &device);
        }
        if s < LOGGED_SITES {
            for i in 0..LOGGERS_PER_SITE {
                let logger = ByteStr::from(format!("logger-{s}-{i}"));
                insert(&mut tree, &format!("site/{s}/#"), None, &logger);
            }
        }
        let filter = format!("site/{s}/dev/+/event/+");
        for i in 0..INGEST_MEMBERS_PER_SITE {
            let member = ByteStr::from(format!("ingest-{i}"));
            insert(&mut tree, &filter, Some("ingest"), &member);
        }
    }
    assert_eq!(tree.len(), TOTAL);
    tree
}

fn count_matches(tree: &TopicTree<u32>, topic: &str) -> usize {
    let mut count = 0;
    tree.for_each_match(topic, |matched| {
        // What the router reads first: the subscription's value, or the group.
        match matched {
            Matched::Subscriber { value, .. } => black_box(value),
            Matched::Shared(group) => black_box(&group.members()[0].1),
        };
        count += 1;
    });
    count
}

/// A subscription no other has: a device added to an existing site.
struct NewDevice {
    filter: String,
    client: ByteStr,
}

/// `n` new devices' `+/temp` subscriptions, numbered from `*next` on.
fn new_devices(next: &mut u32, n: u64) -> Vec<NewDevice> {
    (0..n)
        .map(|_| {
            *next += 1;
            let (s, d) = (*next % SITES, 1_000_000 + *next);
            NewDevice {
                filter: format!("site/{s}/dev/{d}/+/temp"),
                client: ByteStr::from(format!("app-{s}-{d}")),
            }
        })
        .collect()
}

fn bench_topic_tree(c: &mut Criterion) {
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut tree = build();
    let build_time = started.elapsed();
    let rss_after = rss_bytes();
    println!(
        "topic_tree: built {} subscriptions in {:.2} s ({:.0} ns per insert)",
        tree.len(),
        build_time.as_secs_f64(),
        build_time.as_nanos() as f64 / tree.len() as f64,
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let delta = after.saturating_sub(before);
        println!(
            "topic_tree: RSS {:.1} MiB -> {:.1} MiB, +{:.1} MiB for the tree ({:.0} B per subscription)",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            delta as f64 / 1048576.0,
            delta as f64 / tree.len() as f64,
        );
    }

    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(1));
    for (name, topic, expected) in TOPICS {
        assert_eq!(count_matches(&tree, topic), expected, "{topic}");
        group.bench_function(name, |b| b.iter(|| count_matches(&tree, black_box(topic))));
    }
    group.finish();

    // Each sample inserts (removes) its own fresh devices; the other half of
    // the work, removing (inserting) them again, is not timed.
    let mut next = 0;
    let mut group = c.benchmark_group("insert");
    group.throughput(Throughput::Elements(1));
    group.bench_function("new_device", |b| {
        b.iter_custom(|iters| {
            let devices = new_devices(&mut next, iters);
            let started = Instant::now();
            for (value, device) in devices.iter().enumerate() {
                let previous = tree.insert(&device.filter, None, &device.client, value as u32);
                black_box(previous);
            }
            let elapsed = started.elapsed();
            for device in &devices {
                tree.remove(&device.filter, None, &device.client);
            }
            elapsed
        })
    });
    group.finish();

    let mut group = c.benchmark_group("remove");
    group.throughput(Throughput::Elements(1));
    group.bench_function("new_device", |b| {
        b.iter_custom(|iters| {
            let devices = new_devices(&mut next, iters);
            for (value, device) in devices.iter().enumerate() {
                tree.insert(&device.filter, None, &device.client, value as u32);
            }
            let started = Instant::now();
            for device in &devices {
                black_box(tree.remove(&device.filter, None, &device.client));
            }
            started.elapsed()
        })
    });
    group.finish();
    assert_eq!(
        tree.len(),
        TOTAL,
        "insert and remove benchmarks leave the tree as built"
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_topic_tree
}
criterion_main!(benches);
