//! The vector instruction set the CPU backend's own loops use (x86-64 only): the widest this CPU has, or a
//! narrower one chosen with `TIEDAE_CPU_ISA`, to measure on one machine what a CPU without AVX-512 (most
//! laptops) gets, as `ONEDNN_MAX_CPU_ISA` does for Keras (bench/run-cpu.sh sets both).

/// An instruction set of the GEMM kernel (cpu/sgemm.rs) and the element-wise loops (cpu/fast_math.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// AVX2 and FMA: 8-wide vectors, 16 registers (x86-64 CPUs since 2013-2015, laptops included).
    Avx2,
    /// AVX-512F: 16-wide vectors, 32 registers.
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512",
            Isa::Avx2 => "AVX2",
        }
    }
}

/// The instruction set to use: the widest this CPU has, None without AVX2 and FMA (then the GEMM is
/// matrixmultiply's and the loops are compiled for x86-64's baseline). `TIEDAE_CPU_ISA=avx2` or `=baseline`
/// caps it (a cap above what the CPU has, or an unknown value, changes nothing). Read once.
pub fn isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let best = if std::arch::is_x86_feature_detected!("avx512f") {
            Some(Isa::Avx512)
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            Some(Isa::Avx2)
        } else {
            None
        };
        let cap = match std::env::var("TIEDAE_CPU_ISA").as_deref() {
            Ok("avx2") => Some(Isa::Avx2),
            Ok("baseline") => None,
            _ => return best,
        };
        best.min(cap)
    })
}

/// Whether the loops may use `level`'s instructions.
pub fn has(level: Isa) -> bool {
    isa().is_some_and(|isa| isa >= level)
}
