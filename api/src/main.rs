//! `shoplog`: the backend and its operator commands. See `shoplog --help`.

/// mimalloc rather than glibc's malloc: events are decoded on one thread and
/// dropped on another (a replay's readers and models, the writer and its
/// callers), which glibc serves slowly; see docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    api::cli::main()
}
