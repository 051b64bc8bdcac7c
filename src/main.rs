//! The `tollgate` binary: parses the command line and calls into the library.

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
