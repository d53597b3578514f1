//! The fault campaign (see `rewind_campaign::fault`): every storage operation of a fixed
//! workload fails in turn. The suite runs a sample spread over the whole workload;
//! `REWIND_FAULTS_ALL=1` runs every one (as `bench/src/bin/faults.rs` does, on threads).

use std::time::Instant;

use rewind_campaign::fault::{run, targets, trace, Config};
use rewind_storage::OpKind;

/// Runs in the suite (of ~4 per storage operation of the workload).
const SAMPLE: usize = 400;

#[test]
fn every_fault_is_survived_with_no_wrong_data_and_no_lost_flush() {
    let cfg = Config::default();
    let trace = trace(&cfg).expect("the workload runs without faults");
    let all = targets(&trace);
    let pick: Vec<_> = if std::env::var_os("REWIND_FAULTS_ALL").is_some() {
        all.iter().collect()
    } else {
        // Spread over the workload, every kind of operation and fault among them.
        let step = (all.len() / SAMPLE).max(1);
        all.iter()
            .enumerate()
            .filter(|(i, _)| i % step == (i / step) % 4 % step)
            .map(|(_, t)| t)
            .take(SAMPLE)
            .collect()
    };
    let started = Instant::now();
    let (mut hit, mut failed, mut went_on, mut restarted, mut points) = (0, 0, 0, 0, 0);
    let mut failures = Vec::new();
    for t in &pick {
        match run(&cfg, t) {
            Ok(o) => {
                hit += usize::from(o.hit);
                failed += usize::from(o.failed.is_some());
                went_on += usize::from(o.went_on);
                restarted += usize::from(o.restarted);
                points += o.points_checked + o.snapshots_checked;
            }
            Err(e) => failures.push(e),
        }
    }
    let kinds: std::collections::BTreeSet<OpKind> = pick.iter().map(|t| t.op).collect();
    eprintln!(
        "{} storage operations in the workload, {} faults run of {} ({:.1} s): {hit} hit, {failed} failed a host operation, {went_on} went on, {restarted} restarted, {points} points and snapshots checked; kinds {kinds:?}",
        trace.len(),
        pick.len(),
        all.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} faults broke a promise:\n{}",
        failures.len(),
        pick.len(),
        failures.join("\n")
    );
    // (A few operations of the traced run do not come again exactly so: a background
    // thread may take another turn.)
    assert!(hit * 4 >= pick.len() * 3, "most faults must hit");
    for k in [OpKind::Write, OpKind::Sync, OpKind::Create, OpKind::Rename] {
        assert!(kinds.contains(&k), "the sample has no {k:?} fault");
    }
}
