//! Reuse of intermediate buffers: once a node's last reader has run, its
//! buffer returns to the pool and the next node that fits takes it.

/// Buffers handed out by size; `slot` indexes the plan's buffer list.
#[derive(Default)]
pub(crate) struct Pool {
    /// (slot, capacity in bytes) of buffers free for reuse.
    free: Vec<(usize, u64)>,
}

impl Pool {
    /// The smallest free buffer holding `size` bytes, if any.
    pub fn take(&mut self, size: u64) -> Option<usize> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, &(_, cap))| cap >= size)
            .min_by_key(|(_, &(_, cap))| cap)
            .map(|(i, _)| i)?;
        Some(self.free.swap_remove(best).0)
    }

    pub fn give(&mut self, slot: usize, capacity: u64) {
        self.free.push((slot, capacity));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit() {
        let mut p = Pool::default();
        p.give(0, 1024);
        p.give(1, 64);
        p.give(2, 256);
        assert_eq!(p.take(100), Some(2));
        assert_eq!(p.take(2000), None);
        assert_eq!(p.take(10), Some(1));
        assert_eq!(p.take(10), Some(0));
        assert_eq!(p.take(10), None);
    }
}
