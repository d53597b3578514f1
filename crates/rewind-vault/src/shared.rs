//! What every reader of a vault shares: the base image, segment read handles, and loaded
//! delta maps.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rewind_format::delta_map::DeltaMap;
use rewind_format::manifest::MapEntry;
use rewind_format::{names, Seq};

use crate::base::BaseImage;
use crate::error::{corrupted, decode_err, Corruption, Result};
use crate::write_log::reader::SegmentFiles;

#[derive(Debug)]
pub(crate) struct Shared {
    pub block_size: u32,
    pub blocks: u64,
    pub base: BaseImage,
    pub segments: SegmentFiles,
    pub maps_dir: PathBuf,
    maps: Mutex<HashMap<(Seq, Seq), Arc<DeltaMap>>>,
}

impl Shared {
    pub(crate) fn new(
        block_size: u32,
        blocks: u64,
        base: BaseImage,
        segments: SegmentFiles,
        maps_dir: PathBuf,
    ) -> Shared {
        Shared {
            block_size,
            blocks,
            base,
            segments,
            maps_dir,
            maps: Mutex::new(HashMap::new()),
        }
    }

    /// The delta map a manifest entry names, loaded once and verified.
    pub(crate) fn map(&self, e: &MapEntry) -> Result<Arc<DeltaMap>> {
        let key = (e.interval.seq_from, e.interval.seq_to);
        if let Some(m) = self
            .maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(m.clone());
        }
        let path = self.maps_dir.join(names::delta_map(key.0, key.1));
        let bytes = std::fs::read(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => corrupted(&path, 0, Corruption::Missing),
            _ => crate::VaultError::Io {
                op: "read",
                path: path.clone(),
                source: err,
            },
        })?;
        let map = DeltaMap::decode_owned(bytes).map_err(|err| decode_err(&path, 0, err))?;
        if map.interval != e.interval
            || map.block_size != self.block_size
            || map.len() as u64 != e.blocks_changed
        {
            return Err(corrupted(
                &path,
                0,
                Corruption::Inconsistent("delta map does not match the manifest"),
            ));
        }
        if map.last_block().is_some_and(|b| b >= self.blocks) {
            return Err(corrupted(
                &path,
                0,
                Corruption::Inconsistent("delta map names a block outside the volume"),
            ));
        }
        let map = Arc::new(map);
        self.insert(map.clone());
        Ok(map)
    }

    pub(crate) fn insert(&self, map: Arc<DeltaMap>) {
        let key = (map.interval.seq_from, map.interval.seq_to);
        self.maps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, map);
    }
}
