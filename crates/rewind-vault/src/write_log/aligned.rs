//! A byte buffer whose memory is aligned for direct I/O (`O_DIRECT` needs the buffer, the
//! file offset and the length aligned to the device's logical block size).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of buffers, offsets and lengths for direct I/O: enough for any logical block
/// size up to 4 KiB.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// A fixed-capacity buffer aligned to [`DIRECT_ALIGN`]; bytes past `len` up to the
/// capacity are kept zeroed by [`AlignedBuf::pad_to_alignment`] before they are written.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer owns its memory exclusively (like a Vec<u8>); no interior sharing.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read the bytes.
unsafe impl Sync for AlignedBuf {}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("cap", &self.cap)
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuf {
    /// A zeroed buffer of `cap` bytes (rounded up to the alignment).
    pub(crate) fn new(cap: usize) -> AlignedBuf {
        let cap = cap.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let layout = Self::layout(cap);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, cap, len: 0 }
    }

    fn layout(cap: usize) -> Layout {
        match Layout::from_size_align(cap, DIRECT_ALIGN) {
            Ok(l) => l,
            // Only for sizes near isize::MAX, which no caller asks for.
            Err(_) => panic!("aligned buffer of {cap} bytes is too large"),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised (zeroed at allocation) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn full_slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap bytes, all initialised, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Appends bytes; the caller checks the room first (see [`AlignedBuf::room`]).
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        let at = self.len;
        assert!(
            at + bytes.len() <= self.cap,
            "aligned buffer overflow: {} + {} > {}",
            at,
            bytes.len(),
            self.cap
        );
        self.full_slice_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Bytes that can still be appended.
    pub(crate) fn room(&self) -> usize {
        self.cap - self.len
    }

    /// Zeroes the bytes from `len` up to the next multiple of the alignment and returns
    /// the aligned slice: what a direct write of the buffer sends.
    pub(crate) fn pad_to_alignment(&mut self) -> &[u8] {
        let end = self.len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let len = self.len;
        self.full_slice_mut()[len..end].fill(0);
        &self.full_slice_mut()[..end]
    }

    /// Shortens the buffer to `len` bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_padded_and_shifted() {
        let mut b = AlignedBuf::new(10_000);
        assert_eq!(b.room(), 12_288);
        assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
        b.extend_from_slice(&[7u8; 5000]);
        let padded = b.pad_to_alignment().to_vec();
        assert_eq!(padded.len(), 8192);
        assert!(padded[5000..].iter().all(|x| *x == 0));
        b.truncate(10);
        assert_eq!(b.len(), 10);
        assert_eq!(b.room(), 12_288 - 10);
    }
}
