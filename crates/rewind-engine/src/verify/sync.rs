//! Sync: verify at a sealed point, mark suspect intervals, copy the discrepant blocks from
//! the primary into the vault as fix-up records, seal and flag the fix-up interval.

use std::time::Instant;

use rewind_vault::{Point, Seq};

use super::{check_options, suspect, Progress, Result, SyncReport, Target, VerifyOptions};

/// Most blocks copied under one hold of the region locks (1 MiB of 4 KiB blocks).
const COPY_BYTES: u64 = 1 << 20;

pub(super) fn run(
    target: Target<'_>,
    opts: &VerifyOptions,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    let start = Instant::now();
    let vault = target.vault();
    check_options(opts, vault.block_size())?;
    // Track before sealing: every record after the seal is then a tracked host change,
    // so the blocks left in the compare map got their vault copy from the sealed chain.
    let scan_tracker = target.track_changes();
    let scan_seq = vault.seal_now()?;
    let view = vault.view(&Point::Seq(scan_seq))?;
    let verify = super::verify_at(target, &view, scan_tracker.as_deref(), opts, progress)?;
    if verify.cancelled {
        return Ok(report(verify, Vec::new(), start));
    }

    // Suspect marks, before anything is copied.
    let unreadable: roaring::RoaringTreemap = verify.unreadable.keys().copied().collect();
    let chain: Vec<_> = vault
        .chain()
        .into_iter()
        .rev()
        .filter(|e| e.interval.seq_to <= scan_seq)
        .collect();
    let marks = if !opts.mark_suspect {
        Vec::new()
    } else {
        suspect::walk_back(
            &verify.compare,
            &unreadable,
            chain.iter().map(|e| {
                vault
                    .delta_map(e)
                    .map(|m| ((e.interval.seq_from, e.interval.seq_to), m))
            }),
        )?
    };
    vault.mark_suspect(&marks, scan_seq)?;
    for m in &marks {
        let from = m.interval.map_or("the base image".to_string(), |(a, b)| {
            format!("interval {a}-{b}")
        });
        tracing::info!(%from, blocks = m.blocks.len(), "marked suspect: the vault's copy of these blocks was wrong");
    }
    if verify.compare.is_empty() {
        return Ok(report(verify, marks, start));
    }

    // The copy. What the host wrote during the scan goes into an interval of its own, so
    // the fix-up interval holds exactly the fix-ups and the host's changes meanwhile.
    let copy_tracker = target.track_changes();
    vault.seal_now()?;
    drop(scan_tracker);
    let bs = u64::from(vault.block_size());
    let per = (COPY_BYTES / bs).max(1);
    let mut buf = vec![0u8; (per * bs) as usize];
    let mut ranges: Vec<(Seq, Seq)> = Vec::new();
    let mut copied = 0u64;
    progress.start("copying discrepant blocks", verify.compare.len() * bs);
    let result = (|| -> Result<()> {
        for (first, count) in super::runs(&verify.compare) {
            let mut b = first;
            while b < first + count {
                if opts.cancelled() {
                    return Ok(());
                }
                let n = (first + count - b).min(per);
                let data = &mut buf[..(n * bs) as usize];
                let r = target.with_blocks_locked(b, b + n, || -> Result<(Seq, Seq)> {
                    target.read_primary(b * bs, data)?;
                    Ok(vault.fix_up(b, data)?)
                })?;
                match ranges.last_mut() {
                    Some(last) if last.1.next() == r.0 => last.1 = r.1,
                    _ => ranges.push(r),
                }
                copied += n;
                progress.advance(n * bs);
                b += n;
            }
        }
        Ok(())
    })();
    progress.finish();
    // Whatever was copied is made durable, sealed and flagged, even after an error.
    let finished = (|| -> Result<Vec<rewind_vault::IntervalInfo>> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        // Sealing makes the records durable (fdatasync) before it commits the map.
        vault.seal_now()?;
        Ok(vault.flag_fix_ups(&ranges)?)
    })();
    result?;
    let fixup_intervals = finished?;
    let host = copy_tracker.map(|t| t.blocks()).unwrap_or_default();
    let mut fixup_map = verify.compare.clone();
    fixup_map |= &host;
    let mut rep = report(verify, marks, start);
    rep.verify.cancelled |= opts.cancelled() && copied < rep.verify.compare.len();
    rep.fixup_blocks = copied;
    rep.fixup_records = ranges;
    rep.host_changed = host.len();
    rep.fixup_map_blocks = fixup_map.len();
    rep.fixup_intervals = fixup_intervals;
    for i in &rep.fixup_intervals {
        tracing::info!(from = %i.seq_from, to = %i.seq_to, "fix-up interval sealed");
    }
    Ok(rep)
}

fn report(
    verify: super::VerifyReport,
    suspect: Vec<rewind_vault::SuspectMark>,
    start: Instant,
) -> SyncReport {
    SyncReport {
        verify,
        suspect,
        fixup_blocks: 0,
        fixup_records: Vec::new(),
        host_changed: 0,
        fixup_map_blocks: 0,
        fixup_intervals: Vec::new(),
        elapsed: start.elapsed(),
    }
}
