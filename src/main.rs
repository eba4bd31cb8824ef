// glibc's malloc took a seventh of the hot path's CPU (BENCHMARKS.md); every request
// allocates and frees a few dozen small blocks. mimalloc's v2 line (Cargo.toml): v3
// over-allocates blocks above 1 KiB for any alignment (BENCHMARKS.md §22).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
