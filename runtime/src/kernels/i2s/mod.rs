//! I2_S kernels: for a packed ternary row (bitnet.cpp layout, `formats::i2s`) and int8
//! activations, the exact integer dot product Σ t·q. The caller scales it once by β / s.
//!
//! Every variant computes the same integers: the scalar one decodes each weight; the SIMD ones
//! multiply the unsigned codes c = t + 1 ∈ {0,1,2} by the activations (`maddubs` / `vpdpbusd` /
//! `smull`) and subtract Σq, which is exact because c·q stays far from i16/i32 limits.

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "aarch64")]
pub(crate) mod arm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod lut;
mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use crate::cpu::Isa;

/// A row dot: `(packed row, activations padded to the row's weights, Σ activations)`.
type DotFn = fn(&[u8], &[i8], i32) -> i32;

fn dot_fn(isa: Isa) -> DotFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::dot_avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::dot_avx512vnni,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => arm::dot_neon,
        _ => scalar::dot,
    }
}

/// Whether the AVX2 GEMV asks for weight bytes ahead of one row stream (on by default), or reads
/// four quarter streams with no prefetch. The model loader turns it off when the page cache holds
/// the weights in 4 KiB pages, where the prefetch costs more than it saves and four streams read
/// faster. Process-wide: the last model loaded decides; either way the results are the same bits.
pub fn set_weight_prefetch(on: bool) {
    #[cfg(target_arch = "x86_64")]
    x86::WEIGHT_PREFETCH.store(on, std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = on;
}

/// Rows are whole 128-weight blocks (32 bytes each), and there is a whole number of them.
fn check_rows(rows: &[u8], row_bytes: usize) {
    assert!(
        row_bytes > 0 && row_bytes.is_multiple_of(32),
        "I2_S rows are whole 32-byte blocks, got {row_bytes} bytes"
    );
    assert_eq!(rows.len() % row_bytes, 0, "a partial row");
}

/// Σ t·q for one packed row. `act.len()` must equal the row's padded weight count
/// (`row.len() * 4`); `act_sum` is Σ act.
pub fn dot(isa: Isa, row: &[u8], act: &[i8], act_sum: i32) -> i32 {
    assert_eq!(act.len(), row.len() * 4, "activations must cover the padded row");
    assert!(isa.supported(), "{} is not supported on this CPU", isa.name());
    dot_fn(isa)(row, act, act_sum)
}

/// GEMV: `out[r] = Σ t[r]·q` for the consecutive rows of `rows` (each `row_bytes` long).
pub fn gemv(isa: Isa, rows: &[u8], row_bytes: usize, act: &[i8], act_sum: i32, out: &mut [i32]) {
    check_rows(rows, row_bytes);
    assert_eq!(rows.len(), out.len() * row_bytes);
    assert_eq!(act.len(), row_bytes * 4, "activations must cover the padded row");
    gemm(isa, rows, row_bytes, act, &[act_sum], out);
}

/// One band of a one-token GEMV read as four quarter streams: rows `q·quarter + first + i` of
/// `rows` (each `row_bytes`) for q in 0..4 against `act` (Σ = `act_sum`).
#[derive(Clone, Copy)]
pub struct QuarterBand<'a> {
    pub rows: &'a [u8],
    pub row_bytes: usize,
    pub quarter: usize,
    pub first: usize,
    pub act: &'a [i8],
    pub act_sum: i32,
}

/// `out[q][i] = Σ t·q` of row `q·quarter + first + i` of the band, for the four equally long
/// `out[q]`. Consecutive bands continue the same four streams, so a thread taking a run of them
/// reads four unbroken streams. On AVX-512 VNNI the one-token [`gemm`] reads its rows this way
/// (one band of all of them); on other instruction sets, four plain GEMVs. Generation gives each
/// thread one unbroken part of a matrix instead of runs of bands, which streamed faster;
/// `runtime/examples/gemv_probe.rs` (`THREADS=2`) still compares the two.
pub fn gemv_quarters(isa: Isa, band: QuarterBand, out: [&mut [i32]; 4]) {
    let QuarterBand { rows, row_bytes, quarter, first, act, act_sum } = band;
    let n = out[0].len();
    assert!(out.iter().all(|o| o.len() == n) && first + n <= quarter, "four equal pieces within a quarter");
    assert!(row_bytes.is_multiple_of(32) && (3 * quarter + first + n) * row_bytes <= rows.len());
    assert_eq!(act.len(), row_bytes * 4, "activations must cover the padded row");
    assert!(isa.supported(), "{} is not supported on this CPU", isa.name());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: AVX-512 VNNI was checked (isa supported); sizes asserted above.
        unsafe { x86::gemv_vnni_quarters(band, out) };
        return;
    }
    for (q, o) in out.into_iter().enumerate() {
        let start = (q * quarter + first) * row_bytes;
        gemv(isa, &rows[start..start + n * row_bytes], row_bytes, act, act_sum, o);
    }
}

/// `out`'s first four `quarter`-long pieces, and the rest.
pub fn split_quarters(out: &mut [i32], quarter: usize) -> ([&mut [i32]; 4], &mut [i32]) {
    let (q0, rest) = out.split_at_mut(quarter);
    let (q1, rest) = rest.split_at_mut(quarter);
    let (q2, rest) = rest.split_at_mut(quarter);
    let (q3, rest) = rest.split_at_mut(quarter);
    ([q0, q1, q2, q3], rest)
}

/// A prompt's activations laid out once per input for the several-token GEMM this CPU runs:
/// AMX tiles, or the columns of the AVX2 lookup GEMM. `layouts::panel` builds it, and every
/// row chunk, thread and matrix reading that input shares it. None exist off x86-64.
pub enum Panel {
    #[cfg(target_arch = "x86_64")]
    Tiles(amx::Panel),
    #[cfg(target_arch = "x86_64")]
    Columns(lut::Columns),
}

impl Panel {
    /// A panel for a product of `tokens = sums.len()` rows of `k` activations on `isa`, of I2_S
    /// weights when `i2s`, else of another layout whose rows unpack to codes; `None` where no
    /// run would read one.
    pub fn for_product(isa: Isa, i2s: bool, acts: &[i8], sums: &[i32], k: usize) -> Option<Panel> {
        #[cfg(target_arch = "x86_64")]
        {
            if runs_on_amx(isa, sums.len(), k) {
                return Some(Panel::Tiles(amx::Panel::new(acts, sums, k)));
            }
            if i2s && runs_on_tables(isa, sums.len()) {
                return Some(Panel::Columns(lut::Columns::new(acts, sums.len(), k)));
            }
        }
        let _ = (isa, i2s, acts, sums, k);
        None
    }

    #[cfg(target_arch = "x86_64")]
    fn tiles(&self) -> Option<&amx::Panel> {
        match self {
            Panel::Tiles(p) => Some(p),
            _ => None,
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn columns(&self) -> Option<&lut::Columns> {
        match self {
            Panel::Columns(c) => Some(c),
            _ => None,
        }
    }
}

/// GEMM over several tokens: `out[r * tokens + t] = Σ t[r]·q[t]`.
///
/// With AVX2 and several tokens, each block of four rows is unpacked once into an L1-resident
/// buffer of codes, and tokens then run two at a time with only loads and `maddubs`, each
/// activation load serving four rows (docs/performance-notes.md, "Prompt GEMM"). With AVX-512
/// VNNI (and no AMX tiles to run a prompt), rows two at a time are decoded in registers for each
/// pass of up to eight tokens (`x86::gemm_few_vnni`): faster than codes through memory at every
/// token count, and what lets a batch of decoding sequences cost little more than one
/// (docs/performance-notes.md, "Small-batch GEMM"). One token (generation): AVX2 runs rows one
/// at a time through one forward stream (`x86::gemv_avx2`); VNNI four rows at a time taken from
/// the four quarters of the call (`x86::gemv_vnni`) — four adjacent rows would defeat the
/// hardware prefetcher.
pub fn gemm(isa: Isa, rows: &[u8], row_bytes: usize, acts: &[i8], act_sums: &[i32], out: &mut [i32]) {
    gemm_with_panel(isa, rows, row_bytes, acts, act_sums, None, out)
}

/// [`gemm`] with the activations' [`Panel`] when the caller built it once for many calls
/// (`layouts::panel`); without, a run that needs one builds its own.
pub fn gemm_with_panel(
    isa: Isa,
    rows: &[u8],
    row_bytes: usize,
    acts: &[i8],
    act_sums: &[i32],
    panel: Option<&Panel>,
    out: &mut [i32],
) {
    check_rows(rows, row_bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = panel;
    let k = row_bytes * 4;
    let tokens = act_sums.len();
    assert_eq!(acts.len(), tokens * k);
    assert_eq!(rows.len() / row_bytes * tokens, out.len(), "one output per row and token");
    assert!(isa.supported(), "{} is not supported on this CPU", isa.name());
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    match (isa, tokens) {
        (Isa::Avx2, 1) => {
            // SAFETY: AVX2 was checked (isa supported); sizes asserted above (one activation row
            // of k = 4·row_bytes).
            unsafe { x86::gemv_avx2(rows, row_bytes, acts, act_sums[0], out) };
            return;
        }
        (Isa::Avx512Vnni, 1) => {
            // SAFETY: AVX-512 VNNI was checked (isa supported); sizes as above.
            unsafe { x86::gemv_vnni(rows, row_bytes, acts, act_sums[0], out) };
            return;
        }
        (Isa::Avx512Vnni, 2..) if !runs_on_amx(isa, tokens, k) => {
            // SAFETY: AVX-512 VNNI was checked (isa supported); sizes as above.
            unsafe { x86::gemm_few_vnni(rows, row_bytes, acts, act_sums, out) };
            return;
        }
        (Isa::Avx2, 2..) if runs_on_tables(isa, tokens) => {
            let mut own = None;
            let given = panel.and_then(Panel::columns).filter(|c| c.fits(tokens, k));
            let columns = given_or_own(given, &mut own, || lut::Columns::new(acts, tokens, k));
            // SAFETY: AVX2 was checked (isa supported); the columns are of these activations.
            unsafe { lut::gemm(rows, row_bytes, columns, out) };
            return;
        }
        (Isa::Avx2 | Isa::Avx512Vnni, 2..) => {
            // AVX2, or AMX tiles then VNNI for the rows left; on AMX hosts (AVX-512 too) the
            // codes unpack with 512-bit shifts.
            let unpack: Unpack = if runs_on_amx(isa, tokens, k) {
                amx::unpack_i2s_codes_avx512
            } else {
                x86::unpack_codes_avx2
            };
            // SAFETY: AVX2 was checked (VNNI's support includes it), and AVX-512 where AMX runs;
            // sizes asserted above; the unpacker fills k codes per row.
            done = unsafe { gemm_unpacked(isa, rows, row_bytes, k, (acts, act_sums, panel), out, unpack) };
        }
        _ => {}
    }
    let f = dot_fn(isa);
    let rest = rows[done * row_bytes..].chunks_exact(row_bytes);
    for (row, o) in rest.zip(out[done * tokens..].chunks_exact_mut(tokens.max(1))) {
        for ((slot, act), &sum) in o.iter_mut().zip(acts.chunks_exact(k)).zip(act_sums) {
            *slot = f(row, act, sum);
        }
    }
}

/// Tokens from which a prompt GEMM runs on AMX tiles: one 16-token tile's worth (fewer would
/// leave most of each tile padding).
#[cfg(target_arch = "x86_64")]
const AMX_MIN_TOKENS: usize = 16;

/// The several-token GEMM over unpacked codes: the first 16·⌊rows/16⌋ rows on AMX tiles when the
/// CPU has them ([`crate::cpu::amx_int8`]) and there are enough tokens, then the rest (or all)
/// through `x86::gemm_unpacked_rows`. Returns the rows done, as that does.
///
/// # Safety
/// As `x86::gemm_unpacked_rows`, with `isa` AVX2 or AVX-512 VNNI and supported.
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_unpacked(
    isa: Isa,
    rows: &[u8],
    row_bytes: usize,
    k: usize,
    (acts, sums, panel): (&[i8], &[i32], Option<&Panel>),
    out: &mut [i32],
    unpack: Unpack,
) -> usize {
    let tokens = sums.len();
    let vnni = isa == Isa::Avx512Vnni;
    let mut done = 0;
    if runs_on_amx(isa, tokens, k) {
        let mut own = None;
        let given = panel.and_then(Panel::tiles).filter(|p| p.fits(tokens, k));
        let panel = given_or_own(given, &mut own, || amx::Panel::new(acts, sums, k));
        // SAFETY: AMX was granted; the caller's contract on sizes and unpack.
        done = unsafe { amx::gemm_rows(rows, row_bytes, panel, out, unpack) };
    }
    let (rows, out) = (&rows[done * row_bytes..], &mut out[done * tokens..]);
    // SAFETY: forwarded from the caller, on the rows left.
    done + unsafe { x86::gemm_unpacked_rows(rows, row_bytes, k, acts, sums, out, unpack, vnni) }
}

/// Tokens per chunk of the AVX2 lookup GEMM's tables (`lut`; two vectors of sixteen i16 per
/// slot). A prompt split by tokens is split into spans of this many (`layouts::token_spans`).
pub const LOOKUP_CHUNK_TOKENS: usize = 32;

/// The caller's prepared `given` layout of the activations, else one built into `own`.
#[cfg(target_arch = "x86_64")]
fn given_or_own<'a, T>(given: Option<&'a T>, own: &'a mut Option<T>, build: impl FnOnce() -> T) -> &'a T {
    match given {
        Some(g) => g,
        None => own.insert(build()),
    }
}

/// Whether a several-token I2_S product of `tokens` tokens on `isa` runs on lookup tables
/// (`lut`): AVX2 without VNNI, enough tokens, unless `TERN_LUT_GEMM=off` (to measure the
/// `maddubs` GEMM it replaces).
#[cfg(target_arch = "x86_64")]
pub(crate) fn runs_on_tables(isa: Isa, tokens: usize) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    isa == Isa::Avx2
        && tokens >= lut::MIN_TOKENS
        && !*OFF.get_or_init(|| std::env::var("TERN_LUT_GEMM").as_deref() == Ok("off"))
}

/// Whether a several-token product of `tokens` rows of `k` activations on `isa` runs on AMX tiles.
#[cfg(target_arch = "x86_64")]
pub(crate) fn runs_on_amx(isa: Isa, tokens: usize, k: usize) -> bool {
    isa == Isa::Avx512Vnni && tokens >= AMX_MIN_TOKENS && k.is_multiple_of(64) && crate::cpu::amx_int8()
}

/// Unpacks one row into its unsigned codes (t + 1) in activation order (`unsafe`: AVX2).
pub(crate) type Unpack = unsafe fn(&[u8], &mut [u8]);

/// Four rows' dots at once: `(isa, rows, activations, Σ activations)`.
pub(crate) type Dot4 = fn(Isa, [&[u8]; 4], &[i8], i32) -> [i32; 4];

/// The prompt GEMM of the layouts whose rows unpack to 2-bit-style codes (TQ2_0, TQ1_0):
/// `out[r·tokens + t]`, through `unpack` and the decode-free AVX2 dots when there are several
/// tokens, else `dot` row by row — or, for one token where the layout has `dot4` and the CPU
/// wants four weight streams (`cpu::weight_streams`) or runs AVX-512 VNNI, rows from the call's
/// four quarters in lock step, as the I2_S GEMV reads them. `k` weights per row of `row_bytes`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) fn gemm_decoded(
    isa: Isa,
    rows: &[u8],
    row_bytes: usize,
    k: usize,
    (acts, sums, panel): (&[i8], &[i32], Option<&Panel>),
    out: &mut [i32],
    dot: fn(Isa, &[u8], &[i8], i32) -> i32,
    dot4: Option<Dot4>,
    unpack: Option<Unpack>,
) {
    let tokens = sums.len();
    assert!(row_bytes > 0 && rows.len().is_multiple_of(row_bytes) && acts.len() == tokens * k);
    assert_eq!(out.len(), rows.len() / row_bytes * tokens);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if let Some(unpack) =
        unpack.filter(|_| matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) && isa.supported() && tokens > 1)
    {
        // SAFETY: AVX2 was detected; sizes asserted above; the unpacker fills k codes per row.
        done = unsafe { gemm_unpacked(isa, rows, row_bytes, k, (acts, sums, panel), out, unpack) };
    }
    let quarters = isa == Isa::Avx512Vnni || crate::cpu::weight_streams() == 4;
    if let Some(dot4) = dot4.filter(|_| tokens == 1 && quarters) {
        let quarter = rows.len() / row_bytes / 4;
        let row = |r: usize| &rows[r * row_bytes..(r + 1) * row_bytes];
        for i in 0..quarter {
            let index = [0, 1, 2, 3].map(|q| q * quarter + i);
            for (r, d) in index.into_iter().zip(dot4(isa, index.map(row), acts, sums[0])) {
                out[r] = d;
            }
        }
        done = 4 * quarter;
    }
    let rest = rows[done * row_bytes..].chunks_exact(row_bytes);
    for (row, o) in rest.zip(out[done * tokens..].chunks_exact_mut(tokens.max(1))) {
        for ((slot, act), &sum) in o.iter_mut().zip(acts.chunks_exact(k)).zip(sums) {
            *slot = dot(isa, row, act, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_formats::i2s;

    /// SplitMix64 for test data without a rand dependency.
    fn stream(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    fn random_case(rows: usize, cols: usize, seed: u64, extreme: bool) -> (Vec<i8>, Vec<u8>, Vec<i8>) {
        let mut r = stream(seed);
        let codes: Vec<i8> = (0..rows * cols).map(|_| (r() % 3) as i8 - 1).collect();
        let packed = i2s::pack(&codes, rows, cols, 1.0);
        let k = i2s::row_bytes(cols) * 4;
        let mut act: Vec<i8> = (0..cols)
            .map(|_| if extreme { if r().is_multiple_of(2) { -128 } else { 127 } } else { r() as i8 })
            .collect();
        act.resize(k, 0);
        (codes, packed, act)
    }

    /// Σ t·q straight from the unpacked codes: independent of any packing logic.
    fn naive(codes: &[i8], cols: usize, act: &[i8]) -> Vec<i32> {
        codes
            .chunks_exact(cols)
            .map(|row| row.iter().zip(act).map(|(&t, &q)| t as i32 * q as i32).sum())
            .collect()
    }

    #[test]
    fn scalar_matches_the_unpacked_codes() {
        for (rows, cols, seed) in [(1, 128, 1), (3, 96, 2), (4, 2560, 3), (2, 320, 4)] {
            let (codes, packed, act) = random_case(rows, cols, seed, false);
            let rb = i2s::row_bytes(cols);
            let sum = act.iter().map(|&a| a as i32).sum();
            let mut out = vec![0; rows];
            gemv(Isa::Scalar, &packed[..rows * rb], rb, &act, sum, &mut out);
            assert_eq!(out, naive(&codes, cols, &act), "{rows}x{cols}");
        }
    }

    /// Every SIMD path this CPU has equals the scalar one bit for bit, on awkward shapes and on
    /// activations at the int8 extremes (the worst case for intermediate overflow).
    #[test]
    fn every_available_isa_equals_scalar() {
        let shapes = [
            (1, 128),
            (1, 2560),
            (3, 96),
            (5, 256),
            (7, 384),
            (2, 320),
            (8, 128),
            (9, 864),
            (33, 6912),
            (64, 1),
        ];
        for isa in crate::cpu::available() {
            for (i, &(rows, cols)) in shapes.iter().enumerate() {
                for extreme in [false, true] {
                    let (_, packed, act) = random_case(rows, cols, 100 + i as u64, extreme);
                    let rb = i2s::row_bytes(cols);
                    let w = &packed[..rows * rb];
                    let sum = act.iter().map(|&a| a as i32).sum();
                    let (mut want, mut got) = (vec![0; rows], vec![0; rows]);
                    gemv(Isa::Scalar, w, rb, &act, sum, &mut want);
                    gemv(isa, w, rb, &act, sum, &mut got);
                    assert_eq!(got, want, "{} {rows}x{cols} extreme={extreme}", isa.name());
                }
            }
            println!("checked {}", isa.name());
        }
    }

    /// Every way the AVX2 GEMV streams its rows (one prefetched stream, or four quarter streams
    /// with or without a prefetch: the CPU's vendor and the page size pick) equals the scalar
    /// GEMV bit for bit, including rows
    /// left after the quarters and the int8 extremes. Called directly: the process-wide choice
    /// may be flipped by any model a concurrent test loads.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_streams_all_equal_scalar() {
        if !Isa::Avx2.supported() {
            return;
        }
        for (i, &(rows, cols)) in
            [(1, 128), (4, 2560), (7, 384), (19, 6912), (64, 256), (3, 96)].iter().enumerate()
        {
            for extreme in [false, true] {
                let (_, packed, act) = random_case(rows, cols, 300 + i as u64, extreme);
                let rb = i2s::row_bytes(cols);
                let w = &packed[..rows * rb];
                let sum = act.iter().map(|&a| a as i32).sum();
                let mut want = vec![0; rows];
                gemv(Isa::Scalar, w, rb, &act, sum, &mut want);
                use x86::Avx2Streams::*;
                for streams in [OnePrefetched, Quarters, QuartersPrefetched] {
                    let mut got = vec![0; rows];
                    // SAFETY: AVX2 is supported (checked above); sizes as gemv asserts them.
                    unsafe { x86::gemv_avx2_streams(w, rb, &act, sum, &mut got, streams) };
                    assert_eq!(got, want, "{rows}x{cols} extreme={extreme} {streams:?}");
                }
            }
        }
    }

    /// A GEMV cut into quarter bands (as `gemv_probe` cuts it) and the rows left after the quarters
    /// equals the scalar GEMV, on every instruction set, for band sizes that do and do not
    /// divide the quarter.
    #[test]
    fn quarter_bands_equal_the_scalar_gemv() {
        for (rows, cols) in [(4, 128), (19, 384), (64, 2560), (103, 256)] {
            let (codes, packed, act) = random_case(rows, cols, 31 + rows as u64, false);
            let rb = i2s::row_bytes(cols);
            let sum = act.iter().map(|&a| a as i32).sum();
            let want = naive(&codes, cols, &act);
            let quarter = rows / 4;
            for isa in crate::cpu::available() {
                for band in [1, 3, 16, quarter] {
                    let mut got = vec![0; rows];
                    let (quarters, rest) = split_quarters(&mut got, quarter);
                    let [mut q0, mut q1, mut q2, mut q3] = quarters;
                    let mut first = 0;
                    while first < quarter {
                        let n = band.min(quarter - first);
                        let (o0, r0) = q0.split_at_mut(n);
                        let (o1, r1) = q1.split_at_mut(n);
                        let (o2, r2) = q2.split_at_mut(n);
                        let (o3, r3) = q3.split_at_mut(n);
                        let b = QuarterBand {
                            rows: &packed,
                            row_bytes: rb,
                            quarter,
                            first,
                            act: &act,
                            act_sum: sum,
                        };
                        gemv_quarters(isa, b, [o0, o1, o2, o3]);
                        (q0, q1, q2, q3) = (r0, r1, r2, r3);
                        first += n;
                    }
                    let left = &packed[4 * quarter * rb..rows * rb];
                    gemv(isa, left, rb, &act, sum, rest);
                    assert_eq!(got, want, "{} {rows}x{cols} band {band}", isa.name());
                }
            }
        }
    }

    /// The AVX2 lookup GEMM equals the scalar GEMV bit for bit: every chunk shape (16- and
    /// 32-token chunks, part-filled ones), one block and 54 (down's row), awkward row counts, two
    /// bands of rows, and
    /// activations at the int8 extremes (an i16 block sum at its largest); then through `gemm`,
    /// with the columns built once and shared by two row ranges, as the forward pass shares them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lookup_gemm_equals_scalar() {
        if !Isa::Avx2.supported() {
            return;
        }
        let cases = [(3, 128, 1, false), (5, 256, 15, true), (17, 384, 16, false), (2, 128, 17, true)];
        // The last: more rows than one band of the lookup GEMM (`lut::BAND_ROWS`), split in two.
        let more = [
            (33, 6912, 31, true),
            (7, 2560, 32, false),
            (40, 256, 33, true),
            (9, 640, 70, false),
            (3600, 128, 24, true),
        ];
        assert!(more[more.len() - 1].0 > lut::BAND_ROWS, "the last case takes two bands");
        for (i, &(rows, cols, tokens, extreme)) in cases.iter().chain(&more).enumerate() {
            let (_, packed, _) = random_case(rows, cols, 500 + i as u64, false);
            let rb = i2s::row_bytes(cols);
            let k = rb * 4;
            let w = &packed[..rows * rb];
            let mut r = stream(700 + i as u64);
            let mut acts: Vec<i8> = (0..tokens * k)
                .map(|_| if extreme { if r().is_multiple_of(2) { -128 } else { 127 } } else { r() as i8 })
                .collect();
            for token in acts.chunks_exact_mut(k) {
                token[cols..].fill(0);
            }
            let sums: Vec<i32> = acts.chunks_exact(k).map(|a| a.iter().map(|&v| v as i32).sum()).collect();
            let mut want = vec![0; rows * tokens];
            for (t, act) in acts.chunks_exact(k).enumerate() {
                let mut one = vec![0; rows];
                gemv(Isa::Scalar, w, rb, act, sums[t], &mut one);
                for (row, v) in one.into_iter().enumerate() {
                    want[row * tokens + t] = v;
                }
            }
            let columns = lut::Columns::new(&acts, tokens, k);
            let mut got = vec![0; rows * tokens];
            // SAFETY: AVX2 is supported (checked above).
            unsafe { lut::gemm(w, rb, &columns, &mut got) };
            assert_eq!(got, want, "{rows}x{cols}, {tokens} tokens, extreme={extreme}");
            if runs_on_tables(Isa::Avx2, tokens) {
                let panel = Panel::for_product(Isa::Avx2, true, &acts, &sums, k);
                assert!(matches!(panel, Some(Panel::Columns(_))), "{tokens} tokens read columns");
                let split = rows / 2 * tokens;
                let mut got = vec![0; rows * tokens];
                let (first, second) = got.split_at_mut(split);
                gemm_with_panel(Isa::Avx2, &w[..rows / 2 * rb], rb, &acts, &sums, panel.as_ref(), first);
                gemm_with_panel(Isa::Avx2, &w[rows / 2 * rb..], rb, &acts, &sums, panel.as_ref(), second);
                assert_eq!(got, want, "through gemm: {rows}x{cols}, {tokens} tokens");
            }
        }
    }

    #[test]
    fn gemm_equals_gemv_per_token() {
        // Small; and an odd row count (a row left over after the pairs), 54 blocks (several i16
        // widening rounds) with activations at the extremes.
        // Then every token count from 2 to 18: whole and partial passes of the small-batch GEMM;
        // and 33 and 40 tokens, which run on lookup tables where `runs_on_tables` says so.
        let few = (2..=18).map(|t| (5 + t % 3, 128 * (1 + t % 5), t, t % 2 == 0));
        let cases = [
            (6, 256, 5, false),
            (7, 6912, 3, true),
            (9, 384, 1, true),
            (3, 6912, 16, true),
            (5, 512, 33, true),
            (4, 256, 40, false),
        ];
        for (rows, cols, tokens, extreme) in cases.into_iter().chain(few) {
            let (codes, packed, _) = random_case(rows, cols, 7, false);
            let rb = i2s::row_bytes(cols);
            let mut r = stream(99);
            let acts: Vec<i8> = (0..tokens * cols)
                .map(|_| if extreme { if r().is_multiple_of(2) { -128 } else { 127 } } else { r() as i8 })
                .collect();
            let sums: Vec<i32> = acts.chunks_exact(cols).map(|a| a.iter().map(|&v| v as i32).sum()).collect();
            for isa in crate::cpu::available() {
                let mut out = vec![0; rows * tokens];
                gemm(isa, &packed[..rows * rb], rb, &acts, &sums, &mut out);
                for t in 0..tokens {
                    let act = &acts[t * cols..(t + 1) * cols];
                    let mut one = vec![0; rows];
                    gemv(Isa::Scalar, &packed[..rows * rb], rb, act, sums[t], &mut one);
                    assert_eq!(one, naive(&codes, cols, act));
                    let col: Vec<i32> = (0..rows).map(|r| out[r * tokens + t]).collect();
                    assert_eq!(col, one, "{} {rows}x{cols} token {t}", isa.name());
                }
            }
        }
    }
}
