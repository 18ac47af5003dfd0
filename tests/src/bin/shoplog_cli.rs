//! The `shoplog` command line, built inside the tests package so that the CLI tests
//! can run the real binary (`CARGO_BIN_EXE_shoplog_cli`); it is `api`'s `main`,
//! with the same allocator.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    api::cli::main()
}
