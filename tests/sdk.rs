//! The SDK headers (functions/include/faasm) against the runtime: each header compiles on its own
//! in C and in C++ with Ebb's toolchain, and every host function the headers declare is linked by
//! the runtime with the signature the header gives it — except the ones the header says Ebb does
//! not provide, which an upload refuses by name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ebb_memnode::LocalTransport;
use ebb_runtime::exec::Executor;
use ebb_runtime::pager::{Pager, PagerConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn toolchain(tool: &str) -> PathBuf {
    // Building the functions installs the toolchain's packages when missing.
    ebb::function_wasm("demo", "hello");
    root().join("functions/toolchain").join(tool)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn headers() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("functions/include/faasm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".h"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_header_compiles_on_its_own_in_c_and_cpp() {
    let dir = ebb::TempDir::new("sdk-headers");
    let names = headers();
    for expected in ["core.h", "faasm.h", "host_interface.h", "input.h", "state.h", "array.h", "time.h", "files.h", "random.h", "print.h", "compare.h", "memory.h"] {
        assert!(names.iter().any(|n| n == expected), "faasm/{expected} is missing");
    }
    for h in &names {
        for (tool, ext) in [("ebb-clang", "c"), ("ebb-clang++", "cpp")] {
            let src = dir.0.join(format!("only_{}.{ext}", h.trim_end_matches(".h")));
            std::fs::write(&src, format!("#include \"faasm/{h}\"\nint main(void) {{ return 0; }}\n")).unwrap();
            run(Command::new(toolchain(tool)).args(["-Wall", "-Werror", "-fsyntax-only"]).arg(&src));
        }
    }
}

/// The host functions host_interface.h declares: (provided, not provided).
fn declared_imports() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(root().join("functions/include/faasm/host_interface.h")).unwrap();
    let (provided, refused) = text.split_once("Not provided by Ebb").expect("the header marks what Ebb does not provide");
    let names = |s: &str| -> Vec<String> {
        s.split("FAASM_IMPORT(").skip(1).filter_map(|t| t.split_once(')')).map(|(n, _)| n.to_string()).filter(|n| n != "name").collect()
    };
    (names(provided), names(refused))
}

/// A module referring to each of `names` (so that each is imported with its header signature).
fn module_importing(dir: &Path, tag: &str, names: &[String]) -> Vec<u8> {
    let src = dir.join(format!("{tag}.c"));
    let refs: Vec<String> = names.iter().map(|n| format!("(void *){n}")).collect();
    std::fs::write(
        &src,
        format!(
            "#include \"faasm/host_interface.h\"\nvoid *volatile keep[] = {{ {} }};\nint main(int argc, char **argv) {{ (void)argv; return keep[argc] != 0; }}\n",
            refs.join(", ")
        ),
    )
    .unwrap();
    let wasm = dir.join(format!("{tag}.wasm"));
    run(Command::new(toolchain("ebb-clang")).arg("-o").arg(&wasm).arg(&src));
    std::fs::read(&wasm).unwrap()
}

#[test]
fn declared_host_functions_match_what_the_runtime_links() {
    let dir = ebb::TempDir::new("sdk-imports");
    let (provided, refused) = declared_imports();
    assert!(provided.len() >= 28, "{provided:?}");
    let pager = Pager::new(PagerConfig::default(), Arc::new(LocalTransport::embedded(1 << 26))).unwrap();
    let exec = Executor::new(pager).unwrap();

    let module = exec.compile(&module_importing(&dir.0, "provided", &provided)).unwrap();
    let imported: Vec<String> = module.imports().filter(|i| i.module() == "env").map(|i| i.name().to_string()).collect();
    for n in &provided {
        assert!(imported.contains(n), "{n} was not imported: {imported:?}");
    }
    exec.check_imports(&module).unwrap_or_else(|e| panic!("the runtime does not link what the header declares: {e}"));

    let module = exec.compile(&module_importing(&dir.0, "refused", &refused)).unwrap();
    let err = exec.check_imports(&module).expect_err("imports Ebb does not provide are refused");
    for n in &refused {
        assert!(err.contains(&format!("env.{n} (")), "{n} is not named in: {err}");
    }
}

#[test]
fn a_faasm_cmake_project_builds_out_of_tree_with_the_toolchain_file() {
    let dir = ebb::TempDir::new("sdk-cmake");
    let src = dir.0.join("src");
    std::fs::create_dir_all(&src).unwrap();
    // A project laid out as Faasm's func/ directories are: faasm_func / faasm_func_c per function.
    std::fs::write(
        src.join("CMakeLists.txt"),
        "cmake_minimum_required(VERSION 3.8)\nproject(outoftree C CXX)\nfaasm_func(chain chain.cpp)\nfaasm_func_c(io io.c)\n",
    )
    .unwrap();
    for f in ["chain.cpp", "io.c"] {
        std::fs::copy(root().join("functions/compat").join(f), src.join(f)).unwrap();
    }
    let build = dir.0.join("build");
    std::fs::create_dir_all(&build).unwrap();
    toolchain("ebb-clang");
    run(Command::new("cmake")
        .arg(format!("-DCMAKE_TOOLCHAIN_FILE={}", root().join("functions/toolchain/ebb.cmake").display()))
        .arg(&src)
        .current_dir(&build));
    run(Command::new("make").current_dir(&build));
    let pager = Pager::new(PagerConfig::default(), Arc::new(LocalTransport::embedded(1 << 26))).unwrap();
    let exec = Executor::new(pager).unwrap();
    for f in ["chain", "io"] {
        let wasm = std::fs::read(build.join(format!("{f}.wasm"))).unwrap_or_else(|e| panic!("{f}.wasm: {e}"));
        let module = exec.compile(&wasm).unwrap();
        exec.check_imports(&module).unwrap();
        assert!(module.exports().any(|e| e.name() == "__indirect_function_table"), "{f}: the table is exported for chaining");
    }
}
