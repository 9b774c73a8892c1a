fn main() -> std::process::ExitCode {
    lienthong::cli::main()
}
