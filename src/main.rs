// glibc's malloc took a seventh of the hot path's CPU (BENCHMARKS.md); every request
// allocates and frees a few dozen small blocks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keygate::cli::main()
}
