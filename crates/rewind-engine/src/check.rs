//! `rewind check`: the vault's scrub ([`rewind_vault::check`]) and the dirty region log,
//! offline or inside the server (while hosts write).
//!
//! The DRL holds two copies ("slots") of its bitmap; a write goes to the older one, so a
//! torn write leaves the other intact. Both are checked, and the bytes around them (never
//! written: zeroes). A slot never written at all is zeroes too. What damage there breaks is
//! crash repair only: the regions an unclean stop may have left differing.

use std::path::Path;

use rewind_format::drl::DirtyRegions;
use rewind_vault::check::{check_vault, CheckOptions, CheckReport, Fault, Impact, Problem};
use rewind_vault::{Corruption, Progress, VaultError};

use crate::drl;
use crate::intercept::LiveVolume;

/// Slots start on this alignment (see [`rewind_format::drl`]).
const SLOT_ALIGN: usize = 4096;

/// Checks the vault in `dir` with no server running (see [`check_vault`]), and its DRL.
pub fn check_offline(
    dir: &Path,
    opts: &CheckOptions,
    progress: &dyn Progress,
) -> Result<CheckReport, VaultError> {
    let mut report = check_vault(dir, opts, progress)?;
    let path = dir.join(drl::FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => add_drl(&mut report, &path, Ok(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => add_drl(&mut report, &path, Err(e)),
    }
    Ok(report)
}

/// Checks the vault of a live volume from inside the server: hosts keep writing. The DRL
/// is read under its own lock (it is rewritten as regions get dirty), for a moment.
pub fn check_live(
    volume: &LiveVolume,
    opts: &CheckOptions,
    progress: &dyn Progress,
) -> Result<CheckReport, VaultError> {
    let mut report = volume.vault().check(opts, progress)?;
    let path = volume.vault().dir().join(drl::FILE_NAME);
    add_drl(&mut report, &path, volume.drl().read_file());
    Ok(report)
}

fn add_drl(report: &mut CheckReport, path: &Path, bytes: std::io::Result<Vec<u8>>) {
    report.files += 1;
    match bytes {
        Ok(bytes) => {
            report.bytes_read += bytes.len() as u64;
            let problems = check_drl(path, &bytes, report.volume_size, report.block_size);
            report.problems.extend(problems);
        }
        Err(e) => report.problems.push(Problem {
            path: path.to_path_buf(),
            offset: 0,
            length: 0,
            structure: "dirty region log".into(),
            fault: Fault::Unreadable(e),
            impact: Impact::CrashRepair(BOTH_LOST.into()),
        }),
    }
}

const BOTH_LOST: &str = "`rewind serve` refuses to start: it cannot tell which regions an unclean stop left differing. Move the file away and run `rewind sync` (a full compare) before serving again";

/// The problems of a DRL file's bytes, for a volume of `volume_size` bytes (0: not known)
/// with blocks of `block_size`.
pub fn check_drl(path: &Path, bytes: &[u8], volume_size: u64, block_size: u32) -> Vec<Problem> {
    // A file of nothing but zeroes: its very first write was torn; it is started afresh.
    if bytes.iter().all(|b| *b == 0) {
        return Vec::new();
    }
    let (region_size, drl_volume) = geometry(bytes, volume_size, block_size);
    let slot_len = DirtyRegions::slot_len(region_size, drl_volume);
    let enc_len = DirtyRegions::new(region_size, drl_volume).encode().len();
    let mut slots = Vec::new();
    let mut problems = Vec::new();
    for (name, at) in [("A", 0usize), ("B", slot_len)] {
        let Some(slot) = bytes.get(at..) else {
            continue;
        };
        let pad_from = at + enc_len;
        let pad_to = if at == 0 { slot_len } else { bytes.len() };
        if let Some(pad) = bytes.get(pad_from..pad_to.min(bytes.len())) {
            if let Some(i) = pad.iter().position(|b| *b != 0) {
                problems.push(Problem {
                    path: path.to_path_buf(),
                    offset: (pad_from + i) as u64,
                    length: (pad.len() - i) as u64,
                    structure: format!("padding after dirty region log copy {name}"),
                    fault: Fault::Corrupted(Corruption::Inconsistent("padding is not zeroes")),
                    impact: Impact::Nothing("padding between the copies; nothing reads it"),
                });
            }
        }
        let slot = &slot[..slot.len().min(enc_len)];
        // Never written (the first write goes to copy B).
        if !slot.iter().all(|b| *b == 0) {
            slots.push((name, at, enc_len, DirtyRegions::decode_slot(slot)));
        }
    }
    let intact: Vec<&DirtyRegions> = slots
        .iter()
        .filter_map(|(_, _, _, d)| d.as_ref().ok())
        .collect();
    let newest = intact.iter().map(|d| d.generation).max();
    for (name, at, len, d) in &slots {
        let (fault, impact) = match d {
            Err(e) => (
                Fault::Corrupted(Corruption::Decode(e.clone().shifted(*at as u64))),
                match newest {
                    Some(g) => Impact::CrashRepair(format!("the other copy (generation {g}) is intact and is used; if the damaged copy was the newer one, the repair after an unclean stop may miss the regions its last write marked (after a clean stop nothing is missed); the next write of the log rewrites it")),
                    None => Impact::CrashRepair(BOTH_LOST.into()),
                },
            ),
            Ok(d) if volume_size != 0 && d.volume_size != volume_size => (
                Fault::Corrupted(Corruption::Inconsistent(
                    "the dirty region log is for a volume of another size",
                )),
                Impact::CrashRepair(BOTH_LOST.into()),
            ),
            Ok(_) => continue,
        };
        problems.push(Problem {
            path: path.to_path_buf(),
            offset: *at as u64,
            length: *len as u64,
            structure: format!("dirty region log copy {name}"),
            fault,
            impact,
        });
    }
    problems.sort_by_key(|p| p.offset);
    problems
}

/// The region size and volume size the file's slots are laid out for: from slot A if it
/// decodes, else from the first aligned slot that does, else a new DRL's for the volume.
fn geometry(bytes: &[u8], volume_size: u64, block_size: u32) -> (u32, u64) {
    let from_slot = (0..=bytes.len() / SLOT_ALIGN)
        .map(|i| i * SLOT_ALIGN)
        .filter_map(|at| DirtyRegions::decode_slot(&bytes[at..]).ok())
        .next();
    match from_slot {
        Some(d) => (d.region_size, d.volume_size),
        None => (drl::DEFAULT_REGION_SIZE.max(block_size), volume_size),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A DRL file as the server leaves it after a few writes: both slots written.
    fn two_slots(volume: u64) -> Vec<u8> {
        let mut a = DirtyRegions::new(16 << 20, volume);
        a.generation = 2;
        a.clean = true;
        let mut b = a.clone();
        b.generation = 3;
        b.clean = false;
        b.bitmap[0] = 0b101;
        let len = DirtyRegions::slot_len(a.region_size, volume);
        let mut file = vec![0u8; len];
        file[..a.encode().len()].copy_from_slice(&a.encode());
        file.extend_from_slice(&b.encode());
        file
    }

    #[test]
    fn an_intact_drl_is_clean_and_every_flipped_byte_is_named() {
        let volume = 1u64 << 30;
        let file = two_slots(volume);
        let path = Path::new("/v/drl");
        assert!(check_drl(path, &file, volume, 4096).is_empty());
        for at in 0..file.len() {
            let mut bad = file.clone();
            bad[at] ^= 0x08;
            let problems = check_drl(path, &bad, volume, 4096);
            assert_eq!(problems.len(), 1, "byte {at}: {problems:?}");
            let p = &problems[0];
            assert!(
                p.offset <= at as u64 && (at as u64) < p.offset + p.length,
                "byte {at}: {p:?}"
            );
            // Slot A is 64 + 8 (64 regions) + 4 bytes, then zeroes to 4096, then slot B.
            let in_slot = !(76..4096).contains(&at);
            if in_slot {
                assert!(
                    matches!(&p.impact, Impact::CrashRepair(t) if t.contains("generation")),
                    "byte {at}: {p:?}"
                );
            } else {
                assert!(matches!(p.impact, Impact::Nothing(_)), "byte {at}: {p:?}");
            }
        }
    }

    #[test]
    fn both_copies_damaged_stops_serve_and_one_never_written_is_fine() {
        let volume = 1u64 << 30;
        let file = two_slots(volume);
        let path = Path::new("/v/drl");
        let mut bad = file.clone();
        bad[20] ^= 1;
        bad[4096 + 20] ^= 1;
        let problems = check_drl(path, &bad, volume, 4096);
        assert_eq!(problems.len(), 2);
        assert!(problems
            .iter()
            .all(|p| matches!(&p.impact, Impact::CrashRepair(t) if t.contains("refuses"))));
        // Only slot B ever written (the first write goes to generation 1).
        let mut only_b = file.clone();
        only_b[..4096].fill(0);
        assert!(check_drl(path, &only_b, volume, 4096).is_empty());
        // A DRL for another volume size.
        let problems = check_drl(path, &file, volume * 2, 4096);
        assert_eq!(problems.len(), 2, "{problems:?}");
        // Nothing but zeroes: a torn first write, started afresh.
        assert!(check_drl(path, &vec![0u8; 8192], volume, 4096).is_empty());
    }
}
