// The allocator is the library's (see `lienthong::alloc`), so the benchmarks share it.
#[global_allocator]
static GLOBAL: lienthong::alloc::MiMalloc = lienthong::alloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lienthong::cli::main()
}
