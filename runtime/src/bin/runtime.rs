//! `runtime`: Ebb's compute-host runtime. All logic lives in the library.

fn main() -> anyhow::Result<()> {
    ebb_runtime::cli::main()
}
