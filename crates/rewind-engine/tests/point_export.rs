//! A point export's reads: any range, aligned or not, reads what the point holds, and an
//! unaligned read is not held twice (the allocator counts the bytes a read allocates).
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rewind_engine::exports::PointExport;
use rewind_engine::intercept::LiveVolume;
use rewind_nbd::Export;
use rewind_vault::{Compression, CreateOptions, NoProgress, Point, SealPolicy, Vault};

/// Counts the bytes live in the heap and their peak since the last `reset_peak`.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the counters only
// watch it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc_zeroed requires.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from this allocator with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const BS: u64 = 4096;
const BLOCKS: u64 = 8192; // 32 MiB

fn setup(dir: &Path) -> Arc<LiveVolume> {
    let primary = dir.join("primary.img");
    let f = std::fs::File::create(&primary).unwrap();
    f.set_len(BLOCKS * BS).unwrap();
    let opts = CreateOptions {
        primary: primary.clone(),
        vault: dir.join("vault"),
        block_size: BS as u32,
        compression: Compression::None,
        seal: SealPolicy {
            bytes: 0,
            interval_ns: 0,
            writes: 0,
        },
    };
    let vault = Arc::new(Vault::create(&opts, &NoProgress).unwrap());
    Arc::new(LiveVolume::open(&primary, vault).unwrap())
}

#[test]
fn unaligned_reads_of_a_point_read_the_point_and_hold_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let v = setup(tmp.path());
    // Data all over, some of it sealed into a delta map, some in the open interval.
    let data: Vec<u8> = (0..BLOCKS * BS).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    v.write(0, &data[..(16 << 20)], false).unwrap();
    v.vault().seal().unwrap();
    v.write(16 << 20, &data[16 << 20..], false).unwrap();
    let point = v.vault().resolve(&Point::Latest).unwrap();
    let export = PointExport::new("@now".into(), v.vault().view_resolved(point).unwrap());

    for (offset, len) in [
        (0u64, 4096usize),
        (1, 1),
        (4095, 2),
        (100, 5000),
        (4096 * 3 + 17, 4096 * 5),
        ((16 << 20) - 3000, 9000),
        (BLOCKS * BS - 1, 1),
        (12_345, (24 << 20) + 777),
    ] {
        let mut buf = vec![0u8; len];
        export.read(offset, &mut buf).unwrap();
        let at = offset as usize;
        assert!(buf == data[at..at + len], "read of {len} at {offset}");
    }

    // An unaligned 24 MiB read allocates far less than another 24 MiB (it did: the whole
    // range, then a copy).
    let len = 24 << 20;
    let mut buf = vec![0u8; len];
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    export.read(4096 + 512, &mut buf).unwrap();
    let extra = PEAK.load(Ordering::Relaxed) - before;
    assert!(
        extra < len / 4,
        "an unaligned read of {len} bytes allocated {extra} more"
    );
    assert!(buf[..] == data[4096 + 512..4096 + 512 + len]);
}
