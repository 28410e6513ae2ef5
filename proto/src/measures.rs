//! What a core measures for its driver's metrics, held until drained.
//! A core reports each thing as it happens; the driver, which owns the
//! metrics library and the clock, takes them after every input.

/// Most measures held between two drains: bounds a driver that stopped
/// taking them.
pub const HELD: usize = 1 << 16;

/// Measures of kind `M`, at most [`HELD`] of them.
#[derive(Debug)]
pub struct Measures<M>(Vec<M>);

impl<M> Default for Measures<M> {
    fn default() -> Self {
        Measures(Vec::new())
    }
}

impl<M> Measures<M> {
    /// Keeps `m`, unless [`HELD`] are waiting already.
    pub fn push(&mut self, m: M) {
        if self.0.len() < HELD {
            self.0.push(m);
        }
    }

    /// Everything held, leaving none.
    pub fn take(&mut self) -> Vec<M> {
        std::mem::take(&mut self.0)
    }
}
