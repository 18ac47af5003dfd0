//! `shoplog`: the backend and its operator commands. See `shoplog --help`.

fn main() -> std::process::ExitCode {
    api::cli::main()
}
