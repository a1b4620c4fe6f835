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
/// AVX2 kernels under it): its GEMV needs no shifts and shares activation loads across four rows,
/// so generation gets closer to the bandwidth ceiling and prompts run faster
/// (docs/performance-notes.md, "Four quarter streams"). `TERN_KERNEL=avx2` selects AVX2.
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

/// How many weight streams each thread of a one-token matmul keeps in flight: 4 (rows taken in
/// lock step from four far-apart places, each with a short software prefetch) or 1 (one forward
/// stream). Intel cores and AMD cores without AVX-512 (Zen 3) stream much faster through four,
/// while on an AMD core with AVX-512 (Zen 4) four head streams were slower than one
/// (docs/performance-notes.md, "Four quarter streams"), so 1 there and on other architectures,
/// 4 on other x86. `TERN_STREAMS=1|4` overrides it (to measure either way); the bits are the
/// same.
pub fn weight_streams() -> usize {
    static CHOICE: OnceLock<usize> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("TERN_STREAMS").ok().as_deref() {
        Some("1") => 1,
        Some("4") => 4,
        Some(other) => {
            eprintln!("warning: TERN_STREAMS={other} is not 1 or 4; using the CPU's default");
            default_weight_streams()
        }
        None => default_weight_streams(),
    })
}

fn default_weight_streams() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let amd_avx512 =
            cpu_vendor().as_deref() == Some("AuthenticAMD") && is_x86_feature_detected!("avx512f");
        if amd_avx512 { 1 } else { 4 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    1
}

/// The CPUID vendor string (x86-64), e.g. "GenuineIntel" or "AuthenticAMD".
pub fn cpu_vendor() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0 exists on every x86-64 CPU.
        let r = std::arch::x86_64::__cpuid(0);
        let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx].iter().flat_map(|w| w.to_le_bytes()).collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Whether the prompt GEMM runs on AMX-INT8 tiles (`kernels::i2s::amx`): the CPU has AMX-TILE
/// and AMX-INT8, Linux granted this process the tile data state (`arch_prctl`
/// `ARCH_REQ_XCOMP_PERM`, once), and the selected instruction set is AVX-512 VNNI (forcing
/// `TERN_KERNEL=avx2` measures the AVX2 path alone). `TERN_AMX=off` turns it off.
pub fn amx_int8() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        selected() == Isa::Avx512Vnni
            && std::env::var("TERN_AMX").as_deref() != Ok("off")
            && amx_int8_granted()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_int8_granted() -> bool {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let (tile, int8) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 25) != 0);
    if !(tile && int8) {
        return false;
    }
    const ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only asks the kernel to let this
    // process use the AMX tile state; it reads and writes no memory of ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") ARCH_PRCTL as isize => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_int8_granted() -> bool {
    false
}
