//! A bounds-checked little-endian reader over a byte slice.
//!
//! Every read checks the bytes left first, so a lying length or count turns
//! into a typed error at the offset where it was read, never a panic or an
//! allocation sized by the file.

use crate::error::{ErrorKind, LoadError};

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// Offset of the next byte to read, from the start of the file.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], LoadError> {
        let available = self.remaining();
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| {
                LoadError::new(ErrorKind::Truncated {
                    what,
                    needed: n as u64,
                    available: available as u64,
                })
                .at(self.pos as u64)
            })?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], LoadError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, LoadError> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, LoadError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes (no terminator).
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, LoadError> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        let remaining = self.remaining() as u64;
        if len > remaining {
            return Err(LoadError::new(ErrorKind::LengthTooLarge {
                what,
                len,
                remaining,
            })
            .at(at));
        }
        // len <= remaining, which is a usize, so the cast is exact.
        let bytes = self.take(len as usize, what)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| LoadError::new(ErrorKind::InvalidUtf8 { what }).at(at))?;
        Ok(s.to_owned())
    }

    /// A u64 count of items that each take at least `min_item_bytes`: the
    /// count is refused unless that many items could fit in the bytes left,
    /// so callers may allocate `count` slots.
    pub(crate) fn count(
        &mut self,
        what: &'static str,
        min_item_bytes: usize,
    ) -> Result<usize, LoadError> {
        let at = self.pos as u64;
        let count = self.u64(what)?;
        let remaining = self.remaining() as u64;
        let fits = count
            .checked_mul(min_item_bytes as u64)
            .is_some_and(|need| need <= remaining);
        if !fits {
            return Err(LoadError::new(ErrorKind::CountTooLarge {
                what,
                count,
                remaining,
            })
            .at(at));
        }
        // count * min_item_bytes <= remaining (a usize), so count fits too.
        Ok(count as usize)
    }
}
