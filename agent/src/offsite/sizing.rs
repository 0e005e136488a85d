//! Segment and part sizes from a stream's size estimate (pure).
//!
//! A segment is sealed whole in memory, so its size times the uploads in
//! flight is the memory the upload needs. A segment is one object, uploaded in
//! one PUT when it fits in one part, else as a multipart upload.

/// S3's smallest part (all but the last part of an upload).
pub const MIN_PART: u64 = 5 << 20;
/// S3's largest part, and the largest single PUT.
pub const MAX_PART: u64 = 5 << 30;
/// S3's most parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// The smallest stored segment: fewer, larger objects cost fewer requests.
pub const MIN_SEGMENT: u64 = 8 << 20;
/// Aim for about this many segments per stream: a manifest of a few hundred
/// KiB, and enough segments to resume at a fine grain.
pub const TARGET_SEGMENTS: u64 = 1_000;
/// Part size for segments larger than one part: big enough for few requests,
/// small enough to retry cheaply.
pub const PART: u64 = 64 << 20;

/// What the operator allows the upload to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of segment buffers the upload may hold at once.
    pub memory: u64,
    /// Segment uploads running at once.
    pub in_flight: u32,
}

impl Default for Budget {
    /// 1 GiB over 4 uploads: segments of at most 256 MiB.
    fn default() -> Self {
        Budget {
            memory: 1 << 30,
            in_flight: 4,
        }
    }
}

/// How one stream is cut and uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Plaintext bytes per segment (the last one may be shorter).
    pub segment: u64,
    /// Bytes per multipart part; equal to the stored segment size when the
    /// segment goes up in one PUT.
    pub part: u64,
    /// Segment uploads in flight.
    pub in_flight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizingError {
    #[error(
        "memory budget {memory} bytes over {in_flight} uploads in flight leaves less than the \
         {MIN_SEGMENT}-byte minimum segment; raise the budget or lower the concurrency"
    )]
    BudgetTooSmall { memory: u64, in_flight: u32 },
    #[error("uploads in flight must be at least 1")]
    NoConcurrency,
    #[error(
        "segment size {segment} is outside {MIN_PART}..={MAX_PART} bytes, or its part size {part} \
         is: S3 takes parts of 5 MiB to 5 GiB"
    )]
    OutOfRange { segment: u64, part: u64 },
}

/// Sealing adds this much to each segment (see the segment layout in the module doc).
pub const SEAL_OVERHEAD: u64 = super::seal::OVERHEAD as u64;

/// Plans the sizes for a stream of `estimate` bytes (`None`: unknown, as for
/// a `zfs send` whose dry run failed).
///
/// Segments are about `estimate / TARGET_SEGMENTS`, at least [`MIN_SEGMENT`]
/// and at most what the budget allows per upload in flight (and never over
/// one part's 5 GiB, so no segment object comes near 5 TiB). An unknown
/// estimate gets the largest segment the budget allows, the safe side for a
/// stream that may be huge.
pub fn plan(estimate: Option<u64>, budget: Budget) -> Result<Sizing, SizingError> {
    if budget.in_flight == 0 {
        return Err(SizingError::NoConcurrency);
    }
    // Sizes below are of stored segments (sealed); the plaintext is
    // SEAL_OVERHEAD smaller so that stored segments split into whole parts.
    let max_stored = round_down_mib((budget.memory / u64::from(budget.in_flight)).min(MAX_PART));
    if max_stored < MIN_SEGMENT {
        return Err(SizingError::BudgetTooSmall {
            memory: budget.memory,
            in_flight: budget.in_flight,
        });
    }
    let wanted = match estimate {
        Some(bytes) => round_up_mib(bytes.div_ceil(TARGET_SEGMENTS)),
        None => max_stored,
    };
    let stored = wanted.clamp(MIN_SEGMENT, max_stored);
    let sizing = Sizing {
        segment: stored - SEAL_OVERHEAD,
        part: part_for(stored),
        in_flight: budget.in_flight,
    };
    sizing.check()?;
    Ok(sizing)
}

/// The part size for one stored segment of `stored` bytes.
fn part_for(stored: u64) -> u64 {
    if stored <= PART {
        stored
    } else {
        PART.max(stored.div_ceil(MAX_PARTS))
            .clamp(MIN_PART, MAX_PART)
    }
}

impl Sizing {
    /// Sizes set by hand (tests, benchmarks), checked against S3's limits.
    pub fn fixed(segment: u64, part: u64, in_flight: u32) -> Result<Sizing, SizingError> {
        let sizing = Sizing {
            segment,
            part,
            in_flight,
        };
        sizing.check()?;
        Ok(sizing)
    }

    fn check(&self) -> Result<(), SizingError> {
        if self.in_flight == 0 {
            return Err(SizingError::NoConcurrency);
        }
        let stored = self.segment + SEAL_OVERHEAD;
        let single_put = self.part >= stored;
        let ok = self.segment > 0
            && stored <= MAX_PART
            && self.part <= MAX_PART
            && (single_put || self.part >= MIN_PART)
            && self.parts_per_segment() <= MAX_PARTS;
        if ok {
            Ok(())
        } else {
            Err(SizingError::OutOfRange {
                segment: self.segment,
                part: self.part,
            })
        }
    }

    /// Parts of one full stored segment (1: a single PUT).
    pub fn parts_per_segment(&self) -> u64 {
        (self.segment + SEAL_OVERHEAD).div_ceil(self.part)
    }

    /// Segment buffers the upload holds at most: one being filled, plus the
    /// ones in flight.
    pub fn peak_memory(&self) -> u64 {
        (self.segment + SEAL_OVERHEAD) * (u64::from(self.in_flight) + 1)
    }

    /// Segments a stream of `bytes` is cut into (an empty stream is one empty segment).
    pub fn segments_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.segment).max(1)
    }
}

fn round_up_mib(n: u64) -> u64 {
    n.div_ceil(1 << 20) << 20
}

fn round_down_mib(n: u64) -> u64 {
    n >> 20 << 20
}

#[cfg(test)]
mod tests {
    use super::*;

    const TB: u64 = 1_000_000_000_000;

    fn assert_within_limits(s: &Sizing, estimate: u64) {
        let stored = s.segment + SEAL_OVERHEAD;
        assert!(stored <= MAX_PART, "{s:?}");
        assert!(s.segments_for(estimate) * stored >= estimate);
        assert!(s.parts_per_segment() <= MAX_PARTS, "{s:?}");
        if s.parts_per_segment() > 1 {
            assert!((MIN_PART..=MAX_PART).contains(&s.part), "{s:?}");
        }
        assert!(s.segments_for(estimate) >= 1);
    }

    #[test]
    fn synthetic_6tb_estimate_stays_inside_s3_limits_and_the_budget() {
        let budget = Budget::default();
        let s = plan(Some(6 * TB), budget).unwrap();
        assert_within_limits(&s, 6 * TB);
        // 6 TB / 1000 is 6 GB, over the 256 MiB the budget allows per upload.
        assert_eq!(s.segment + SEAL_OVERHEAD, 256 << 20);
        assert!((s.segment + SEAL_OVERHEAD) * u64::from(budget.in_flight) <= budget.memory);
        assert_eq!(s.peak_memory(), 5 * (256 << 20));
        assert_eq!(s.segments_for(6 * TB), 22_352);
        assert_eq!(s.part, PART);
        assert_eq!(s.parts_per_segment(), 4);
    }

    #[test]
    fn a_6tb_estimate_with_a_big_budget_still_fits_one_part_per_put_limit() {
        let budget = Budget {
            memory: 64 << 30,
            in_flight: 2,
        };
        let s = plan(Some(6 * TB), budget).unwrap();
        assert_within_limits(&s, 6 * TB);
        // 6 TB / 1000 is 6 GB: over one part, so the 5 GiB PUT limit binds.
        assert_eq!(s.segment + SEAL_OVERHEAD, MAX_PART);
        assert_eq!(s.segments_for(6 * TB), 1_118);
        assert_eq!(s.parts_per_segment(), 80);
    }

    #[test]
    fn unknown_estimate_takes_the_largest_segment_the_budget_allows() {
        let s = plan(None, Budget::default()).unwrap();
        assert_eq!(s.segment + SEAL_OVERHEAD, 256 << 20);
        let huge = plan(
            None,
            Budget {
                memory: 1 << 40,
                in_flight: 1,
            },
        )
        .unwrap();
        assert!(huge.segment + SEAL_OVERHEAD <= MAX_PART);
        assert_within_limits(&huge, 100 * TB);
    }

    #[test]
    fn small_streams_get_the_minimum_segment_in_one_put() {
        let s = plan(Some(1000), Budget::default()).unwrap();
        assert_eq!(s.segment + SEAL_OVERHEAD, MIN_SEGMENT);
        assert_eq!(s.parts_per_segment(), 1);
        assert_eq!(s.segments_for(0), 1);
    }

    #[test]
    fn every_estimate_and_budget_stays_inside_the_limits() {
        for estimate in [0, 1, 5 << 20, 1 << 30, 37 * (1 << 30), TB, 6 * TB, 50 * TB] {
            for (memory, in_flight) in [(64 << 20, 8), (1 << 30, 4), (16 << 30, 1), (1 << 40, 3)] {
                let s = plan(Some(estimate), Budget { memory, in_flight }).unwrap();
                assert_within_limits(&s, estimate);
                assert!(s.segment <= memory / u64::from(in_flight), "{s:?}");
            }
        }
    }

    #[test]
    fn a_budget_below_one_minimum_segment_is_refused() {
        let err = plan(
            Some(TB),
            Budget {
                memory: 32 << 20,
                in_flight: 8,
            },
        )
        .unwrap_err();
        assert!(matches!(err, SizingError::BudgetTooSmall { .. }));
        assert!(err.to_string().contains("raise the budget"));
        assert_eq!(
            plan(
                None,
                Budget {
                    memory: 1 << 30,
                    in_flight: 0
                }
            ),
            Err(SizingError::NoConcurrency)
        );
    }

    #[test]
    fn fixed_sizes_are_checked_against_the_part_rules() {
        assert!(Sizing::fixed(1 << 20, 2 << 20, 1).is_ok());
        assert!(Sizing::fixed(12 << 20, MIN_PART, 2).is_ok());
        assert!(Sizing::fixed(12 << 20, 1 << 20, 2).is_err());
        assert!(Sizing::fixed(6 << 30, MAX_PART, 1).is_err());
    }
}
