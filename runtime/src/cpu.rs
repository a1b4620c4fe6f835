//! Which instruction set the kernels use, chosen once at run time (never by compile-time
//! `target_feature`, so one binary runs everywhere), overridable with `TERN_KERNEL=scalar|avx2|
//! avx512vnni|neon` to test or compare a path.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust; the reference every SIMD kernel is tested against.
    Scalar,
    /// x86-64 AVX2 (`maddubs` over unsigned codes).
    Avx2,
    /// x86-64 AVX-512 VNNI (`vpdpbusd`), with AVX-512BW/VL.
    Avx512Vnni,
    /// aarch64 NEON (`smull` + pairwise accumulate).
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon].into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the instruction set.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && Isa::Avx2.supported()
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Every instruction set this CPU supports, in order of preference: AVX-512 VNNI first, for its
/// I2_S kernels (256-bit `vpdpbusd` through AVX-512VL; the other layouts and the head use the
/// AVX2 kernels under it). On the AMD EPYC (Zen 4) machine tern is measured on, one generating
/// thread reaches 86-87 % of the bandwidth ceiling instead of 73-77 %, and prompts run 10-20 %
/// faster (docs/benchmarks.md). `TERN_KERNEL=avx2` selects AVX2.
pub fn available() -> Vec<Isa> {
    [Isa::Avx512Vnni, Isa::Avx2, Isa::Neon, Isa::Scalar].into_iter().filter(|i| i.supported()).collect()
}

/// The instruction set the runtime uses: `TERN_KERNEL` if set and supported, else the preferred.
pub fn selected() -> Isa {
    static CHOICE: OnceLock<Isa> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let best = available()[0];
        match std::env::var("TERN_KERNEL").ok().as_deref().map(Isa::from_name) {
            Some(Some(isa)) if isa.supported() => isa,
            Some(_) => {
                eprintln!(
                    "warning: TERN_KERNEL is not a supported instruction set here; using {}",
                    best.name()
                );
                best
            }
            None => best,
        }
    })
}
