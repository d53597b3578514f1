//! What an online check reads: the catalog as this vault holds it and how much of the open
//! segment is durable, taken together under the vault's lock (a moment, never held while
//! the check reads).

use super::*;
use crate::check::Scope;

impl Vault {
    /// The catalog and the durable end of the open segment, as of now. Only the writer
    /// knows what is durable: a read-only vault is [`VaultError::ReadOnly`].
    pub(crate) fn check_scope(&self) -> Result<Scope> {
        if self._lock.is_none() {
            return Err(VaultError::ReadOnly);
        }
        let (inner, _) = self.wait_for_seal(self.lock());
        if let Some(s) = &inner.sealing {
            // A seal that failed and waits: the manifest names its segment as the open
            // one, durable to its end; the segment after it is not checked.
            return Ok(Scope {
                manifest: inner.manifest.clone(),
                open_durable: s.seg.written,
                newest: s.interval.seq_to,
                open_markers: s
                    .seg
                    .markers
                    .iter()
                    .map(|m| (m.name.clone(), m.seq))
                    .collect(),
            });
        }
        Ok(Scope {
            manifest: inner.manifest.clone(),
            open_durable: inner.durable_bytes,
            newest: inner.durable_seq,
            open_markers: inner
                .open
                .markers
                .iter()
                .filter(|m| m.seq <= inner.durable_seq)
                .map(|m| (m.name.clone(), m.seq))
                .collect(),
        })
    }
}
