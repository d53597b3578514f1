//! Requests up to the maximum payload (64 MiB: nbd's integrityhuge test sends 48 MiB, nbdkit
//! takes 64), several in flight at once, against an export large enough for them whose
//! data is a pattern of its offsets (nothing held in memory).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use rewind_nbd::proto::*;
use rewind_nbd::{serve_connection, Export, ExportError, Exports, ServerStats};

const BIG: u64 = 256 << 20;
const MAX: usize = MAX_PAYLOAD as usize;

/// What every byte reads as.
fn pattern(offset: u64) -> u8 {
    ((offset >> 9) as u8) ^ (offset as u8).wrapping_mul(13)
}

/// What the test writes at each byte.
fn written(offset: u64) -> u8 {
    !pattern(offset)
}

/// A read-write export of [`BIG`] bytes: reads return [`pattern`]; writes must carry
/// [`written`] bytes, and count the bytes that did.
#[derive(Default)]
struct PatternDisk {
    good_bytes: AtomicU64,
}

impl Export for PatternDisk {
    fn name(&self) -> &str {
        "live"
    }
    fn description(&self) -> &str {
        "a pattern"
    }
    fn size(&self) -> u64 {
        BIG
    }
    fn read_only(&self) -> bool {
        false
    }
    fn block_size(&self) -> u32 {
        4096
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ExportError> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(offset + i as u64);
        }
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _: bool) -> Result<(), ExportError> {
        let bad = (0..data.len()).find(|&i| data[i] != written(offset + i as u64));
        if let Some(i) = bad {
            return Err(ExportError::Io(format!(
                "byte {} is wrong",
                offset + i as u64
            )));
        }
        self.good_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
    fn trim(&self, _: u64, _: u32, _: bool) -> Result<(), ExportError> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u32, _: bool, _: bool) -> Result<(), ExportError> {
        Ok(())
    }
    fn block_status(&self, _: u64, len: u32, _: bool) -> Result<Vec<(u32, u32)>, ExportError> {
        Ok(vec![(len, 0)])
    }
}

struct One(Arc<PatternDisk>);

impl Exports for One {
    fn list(&self) -> Vec<(String, String)> {
        vec![("live".into(), "a pattern".into())]
    }
    fn open(&self, _: &str) -> Result<Arc<dyn Export>, ExportError> {
        Ok(self.0.clone())
    }
}

/// Negotiates with NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE; returns the socket and the
/// advertised maximum payload.
fn connect(disk: &Arc<PatternDisk>, structured: bool) -> (UnixStream, u32) {
    let (mut c, s) = UnixStream::pair().unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let exports = One(disk.clone());
    std::thread::spawn(move || {
        let r = s.try_clone().unwrap();
        serve_connection(r, s, &exports, &ServerStats::default())
    });
    read_n(&mut c, 18).unwrap();
    c.write_all(&be32(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES))
        .unwrap();
    if structured {
        c.write_all(&opt(OPT_STRUCTURED_REPLY, &[])).unwrap();
        assert_eq!(read_opt_reply(&mut c).unwrap().typ, REP_ACK);
    }
    c.write_all(&opt(OPT_GO, &info_data("live", &[INFO_BLOCK_SIZE])))
        .unwrap();
    let mut max = 0;
    loop {
        let r = read_opt_reply(&mut c).unwrap();
        if r.typ == REP_ACK {
            return (c, max);
        }
        assert_eq!(r.typ, REP_INFO, "{r:?}");
        if u16::from_be_bytes([r.data[0], r.data[1]]) == INFO_BLOCK_SIZE {
            max = u32::from_be_bytes(r.data[10..14].try_into().unwrap());
        }
    }
}

#[test]
fn the_advertised_maximum_payload_is_64_mib() {
    let (_c, max) = connect(&Arc::new(PatternDisk::default()), false);
    assert_eq!(max, MAX_PAYLOAD);
    assert!(max >= 64 << 20, "{max}");
}

/// READs and WRITEs of up to the maximum, aligned and not, all sent before any reply is
/// read (a writer thread sends while the replies come back), with both reply forms.
fn big_requests(structured: bool) {
    let disk = Arc::new(PatternDisk::default());
    let (mut c, _) = connect(&disk, structured);
    let reqs: Vec<(u16, u64, usize)> = vec![
        (CMD_WRITE, 0, MAX),
        (CMD_READ, 0, MAX),
        (CMD_WRITE, (100 << 20) + 512, MAX - 4096 + 1),
        (CMD_READ, (64 << 20) + 4095, 48 << 20),
        (CMD_READ, BIG - MAX as u64, MAX),
        (CMD_WRITE, BIG - (48 << 20), 48 << 20),
        (CMD_FLUSH, 0, 0),
        (CMD_READ, 12345, 4096),
    ];
    let mut tx = c.try_clone().unwrap();
    let sent = reqs.clone();
    let sender = std::thread::spawn(move || {
        for (i, &(kind, offset, len)) in sent.iter().enumerate() {
            tx.write_all(&req(0, kind, i as u64, offset, len as u32))
                .unwrap();
            if kind == CMD_WRITE {
                let data: Vec<u8> = (0..len as u64).map(|j| written(offset + j)).collect();
                tx.write_all(&data).unwrap();
            }
        }
        tx.write_all(&req(0, CMD_DISC, 99, 0, 0)).unwrap();
    });
    let mut done = vec![false; reqs.len()];
    while done.iter().any(|d| !d) {
        let mut msgs = Vec::new();
        loop {
            let reads = |cookie: u64| match reqs[cookie as usize] {
                (CMD_READ, _, len) => len,
                _ => 0,
            };
            let m = read_reply(&mut c, reads).unwrap();
            let last = m.is_final();
            msgs.push(m);
            if last {
                break;
            }
        }
        let cookie = msgs[0].cookie() as usize;
        let (kind, offset, len) = reqs[cookie];
        assert!(!done[cookie], "two replies to {cookie}");
        done[cookie] = true;
        if kind == CMD_READ {
            let data = read_result(&msgs, structured, offset, len as u32).unwrap();
            let bad = (0..len).find(|&j| data[j] != pattern(offset + j as u64));
            assert_eq!(bad, None, "READ {cookie} of {len} bytes at {offset}");
        } else {
            assert_eq!(msgs.len(), 1);
            assert_eq!(
                msgs[0].error(),
                0,
                "{kind} {cookie}: {:?}",
                msgs[0].cookie()
            );
        }
    }
    sender.join().unwrap();
    let want: usize = reqs.iter().filter(|r| r.0 == CMD_WRITE).map(|r| r.2).sum();
    assert_eq!(disk.good_bytes.load(Ordering::Relaxed), want as u64);
}

#[test]
fn reads_and_writes_of_up_to_64_mib_in_flight_with_simple_replies() {
    big_requests(false);
}

#[test]
fn reads_and_writes_of_up_to_64_mib_in_flight_with_structured_replies() {
    big_requests(true);
}
