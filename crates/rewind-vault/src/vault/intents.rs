//! Intents: multi-step work recorded in the manifest before its first step, so that the
//! next opener can finish what a crash, a kill or a Ctrl-C interrupted (see
//! [`rewind_format::intent`]).

use super::*;
use rewind_format::intent::{Intent, RestoreInPlace, Serving};

impl Vault {
    /// Work under way, as the manifest records it.
    pub fn intents(&self) -> Vec<Intent> {
        self.lock().manifest.intents.clone()
    }

    /// The in-place restore under way, if one was interrupted (or is running).
    pub fn restore_intent(&self) -> Option<RestoreInPlace> {
        self.lock().manifest.intents.iter().find_map(|i| match i {
            Intent::RestoreInPlace(r) => Some(r.clone()),
            _ => None,
        })
    }

    /// Records that an in-place restore to `r.target_seq` is under way, replacing one that
    /// was (a restore to another point supersedes an interrupted one). Durable when it
    /// returns: only then may the restore touch the primary.
    pub fn begin_restore(&self, r: RestoreInPlace) -> Result<()> {
        let mut inner = self.lock_for_edit()?;
        let mut m = inner.manifest.clone();
        m.intents
            .retain(|i| !matches!(i, Intent::RestoreInPlace(_)));
        m.intents.push(Intent::RestoreInPlace(r));
        self.commit_locked(&mut inner, m)
    }

    /// Records that the in-place restore is done (durably).
    pub fn end_restore(&self) -> Result<()> {
        let mut inner = self.lock_for_edit()?;
        if !inner
            .manifest
            .intents
            .iter()
            .any(|i| matches!(i, Intent::RestoreInPlace(_)))
        {
            return Ok(());
        }
        let mut m = inner.manifest.clone();
        m.intents
            .retain(|i| !matches!(i, Intent::RestoreInPlace(_)));
        self.commit_locked(&mut inner, m)
    }

    /// What the manifest says of the live volume: open (in which boot, synced up to which
    /// seq) or not. Present when the vault is opened: the last stop was not clean.
    pub fn serving(&self) -> Option<Serving> {
        self.lock().manifest.intents.iter().find_map(|i| match i {
            Intent::Serving(s) => Some(*s),
            _ => None,
        })
    }

    /// Records (durably) that a live volume is open in this boot with the primary synced
    /// up to `checkpoint_seq`, or (`None`) that it stopped cleanly.
    pub fn set_serving(&self, serving: Option<Serving>) -> Result<()> {
        let mut inner = self.lock_for_edit()?;
        let now = inner.manifest.intents.iter().find_map(|i| match i {
            Intent::Serving(s) => Some(*s),
            _ => None,
        });
        if now == serving {
            return Ok(());
        }
        let mut m = inner.manifest.clone();
        m.intents.retain(|i| !matches!(i, Intent::Serving(_)));
        m.intents.extend(serving.map(Intent::Serving));
        self.commit_locked(&mut inner, m)
    }
}
