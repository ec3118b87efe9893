//! Crash safety of the management store (`mgmt::store::RedbStore`): a writer process commits
//! a stream of batches, each touching every table with one generation number and printing
//! `ack N` after its commit returns; the test SIGKILLs it at random moments (at least 200
//! times) and after each kill reopens the store and checks that the state is one generation
//! throughout (never a mix of two batches) and that it is the last acknowledged one or the one
//! after it (committed, killed before the ack was printed) — an acknowledged batch is never
//! lost.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pcietun::mgmt::store::{Change, RedbStore, Store, Table};

const CHILD_ENV: &str = "PCIETUN_STORE_WRITER";
const KEYS: [(Table, &str); 6] = [
    (Table::Accounts, "ops"),
    (Table::Accounts, "viewer"),
    (Table::Assignments, "dma-a"),
    (Table::Policies, "nvme0"),
    (Table::Subscriptions, "1"),
    (Table::Meta, "generation"),
];

/// The generation the store holds: every key must agree (`None` before the first batch).
fn generation(path: &Path) -> Option<u64> {
    let s = RedbStore::open(path).expect("the store opens after a kill");
    let values: Vec<Option<u64>> = KEYS
        .iter()
        .map(|(t, k)| {
            s.get(*t, k).unwrap().map(|v| {
                // Values are "N:" followed by padding that makes batches span pages.
                let text = String::from_utf8(v).unwrap();
                text.split(':').next().unwrap().parse().unwrap()
            })
        })
        .collect();
    assert!(
        values.iter().all(|v| *v == values[0]),
        "a mix of batches after a crash: {values:?}"
    );
    values[0]
}

/// The writer: commit generation after generation until killed.
fn writer(path: &Path) {
    let s = RedbStore::open(path).unwrap();
    let mut g = s
        .get(Table::Meta, "generation")
        .unwrap()
        .map(|v| {
            String::from_utf8(v)
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .unwrap_or(0);
    let pad = "x".repeat(3000);
    loop {
        g += 1;
        let batch: Vec<Change> = KEYS
            .iter()
            .map(|(t, k)| Change::Put {
                table: *t,
                key: (*k).into(),
                value: format!("{g}:{pad}").into_bytes(),
            })
            .collect();
        s.commit(&batch).unwrap();
        println!("ACKED {g}");
    }
}

#[test]
fn sigkill_never_leaves_a_mix_or_loses_an_ack() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        writer(Path::new(&path));
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("mgmt.redb");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut acked: Option<u64> = None;
    let mut kills = 0;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    while kills < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "only {kills} kills in 90 s"
        );
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_never_leaves_a_mix_or_loses_an_ack",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // xorshift: a kill after 0..40 ms of writing.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 40_000));
        let _ = child.kill(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        for line in BufReader::new(&out.stdout[..]).lines() {
            // The harness's own "test NAME ... " may precede the first ack on its line.
            let line = line.unwrap();
            if let Some(n) = line.rfind("ACKED ").map(|i| &line[i + 6..]) {
                let n: u64 = n.parse().unwrap();
                assert!(
                    acked.is_none_or(|a| n > a),
                    "acks go up: {n} after {acked:?}"
                );
                acked = Some(n);
            }
        }
        let g = generation(&path);
        let ok = match (acked, g) {
            (None, None) => true,
            (None, Some(g)) => g == 1,
            (Some(a), Some(g)) => g == a || g == a + 1,
            (Some(_), None) => false,
        };
        assert!(
            ok,
            "after kill {kills}: store at {g:?}, last ack {acked:?} (must be the ack or the next)"
        );
        // The next writer continues from what is stored; an unacknowledged commit that
        // survived counts as acknowledged from here on.
        acked = g;
        kills += 1;
    }
    eprintln!(
        "{kills} kills in {:?}, {} generations committed",
        started.elapsed(),
        acked.unwrap_or(0)
    );
    assert!(
        acked.unwrap_or(0) > 50,
        "the writer barely wrote: {acked:?}"
    );
}
