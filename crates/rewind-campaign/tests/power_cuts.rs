//! Power cuts at random moments of random workloads; see `rewind_campaign::power_cut`.

use rewind_campaign::power_cut::{run, Config};

/// Cuts in the test suite (the long program runs as many as asked for).
const CUTS: u64 = 240;

#[test]
fn random_power_cuts_keep_every_promise() {
    let base = std::env::var("REWIND_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0000_u64);
    let mut failures = Vec::new();
    let (mut mid, mut points, mut snaps, mut restores) = (0, 0, 0, 0);
    for i in 0..CUTS {
        match run(&Config::new(base + i)) {
            Ok(o) => {
                mid += usize::from(o.mid_workload);
                points += o.points_checked;
                snaps += o.snapshots_checked;
                restores += usize::from(o.restore_finished);
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "{CUTS} cuts ({mid} inside the workload), {points} points and {snaps} snapshots checked, {restores} interrupted restores finished"
    );
    assert!(
        failures.is_empty(),
        "{} of {CUTS} cuts broke a promise:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        mid as u64 > CUTS / 2,
        "most cuts must fall inside the workload"
    );
}

/// Replays one cut: `REWIND_CAMPAIGN_ONE=<seed> cargo test -p rewind-campaign one_cut`.
#[test]
fn one_cut() {
    let Some(seed) = std::env::var("REWIND_CAMPAIGN_ONE")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    if let Err(e) = run(&Config::new(seed)) {
        panic!("{e}");
    }
}
