//! What can go wrong with a ring: a corrupt peer-written index, a bad layout, a full ring.

use super::*;

/// Which shared index a [`CorruptIndex`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexField {
    /// The producer's published tail, as read by the consumer.
    Tail,
    /// The consumer's released head, as read by the producer.
    Head,
    /// A slot's stamp, as read by the consumer.
    Stamp,
}

impl fmt::Display for IndexField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IndexField::Tail => "tail",
            IndexField::Head => "head",
            IndexField::Stamp => "stamp",
        })
    }
}

/// A peer-written ring index or stamp that no correct peer could have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptIndex {
    /// What was read.
    pub field: IndexField,
    /// The value found in shared memory.
    pub found: u32,
    /// For `head` and `tail`, the lowest value a correct peer could have written (wrapping).
    /// For a stamp, the value a correct producer leaves until it publishes the slot's entry
    /// (the stamp of the slot's previous lap).
    pub low: u32,
    /// For `head` and `tail`, the highest value a correct peer could have written (wrapping).
    /// For a stamp, the value a correct producer writes when it publishes the entry (the
    /// entry's index plus one).
    pub high: u32,
    /// The ring's capacity.
    pub capacity: u32,
}

impl fmt::Display for CorruptIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let CorruptIndex {
            field,
            found,
            low,
            high,
            capacity,
        } = *self;
        match field {
            IndexField::Stamp => write!(
                f,
                "corrupt ring: a peer-written stamp is {found}, but a correct producer leaves \
                 {low} in that slot until it publishes the entry due there, then writes {high} \
                 (capacity {capacity})"
            ),
            _ => write!(
                f,
                "corrupt ring: peer-written {field} is {found}, which is not within \
                 [{low}, {high}] (capacity {capacity})"
            ),
        }
    }
}

impl std::error::Error for CorruptIndex {}

/// Why a ring could not be created or attached, or an operation on it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The capacity is zero, not a power of two, or larger than [`MAX_CAPACITY`].
    #[error("ring capacity {0} is invalid: it must be a power of two between 1 and 2^31")]
    InvalidCapacity(u64),
    /// The entry type is zero-sized or larger than 4 GiB.
    #[error("ring entry type of {size} bytes is not supported")]
    InvalidEntry {
        /// `size_of::<T>()`.
        size: usize,
    },
    /// The ring does not fit in the region, or is misplaced.
    #[error("ring does not fit the region: {0}")]
    Region(#[from] RegionError),
    /// An existing ring header does not describe the ring the caller expects.
    #[error("ring header at offset {offset}: {field} is {found}, expected {expected}")]
    HeaderMismatch {
        /// Offset of the ring in its region.
        offset: usize,
        /// Name of the header field.
        field: &'static str,
        /// Value found.
        found: u64,
        /// Value expected.
        expected: u64,
    },
    /// A peer-written index is out of range.
    #[error(transparent)]
    Corrupt(#[from] CorruptIndex),
}

/// A rejected push: the entry comes back to the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError<T> {
    /// The ring is full: back-pressure. Retry after the consumer has released entries.
    #[error("ring is full")]
    Full(T),
    /// The consumer's head index in shared memory is corrupt.
    #[error("{0}")]
    Corrupt(CorruptIndex, T),
}

impl<T> PushError<T> {
    /// The entry that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            PushError::Full(t) | PushError::Corrupt(_, t) => t,
        }
    }
}
