//! Cuts a fuzz input into the pieces a socket might deliver it in. Shared by the
//! stream-decoder targets (included with `mod split;`); no parsing of its own.

/// Largest piece, chosen by two bits of the control byte: one byte at a time,
/// small reads, typical reads, and whole-buffer reads.
const PIECE_BYTES_MAX: [usize; 4] = [1, 7, 64, 4096];

/// The piece sizes for `data`: a xorshift sequence seeded by `seed`, each
/// piece 1..=`PIECE_BYTES_MAX[mode & 3]` bytes, so the fuzzer picks the split
/// points with two input bytes.
pub fn pieces(data: &[u8], mode: u8, seed: u8) -> Vec<&[u8]> {
    let max = PIECE_BYTES_MAX[usize::from(mode & 3)];
    // xorshift32 needs a non-zero state.
    let mut state = u32::from(seed) << 8 | 0x9e;
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = 1 + state as usize % max;
        let end = (at + size).min(data.len());
        out.push(&data[at..end]);
        at = end;
    }
    out
}
