# CMake toolchain file for Ebb functions: cmake -DCMAKE_TOOLCHAIN_FILE=<ebb>/functions/toolchain/ebb.cmake
# Compiles with ebb-clang / ebb-clang++ (Faasm's defaults, Ebb's SDK headers; see ebb-cc), for
# wasm32-wasi, executables named *.wasm. Like Faasm's WasiToolchain.cmake, it defines __faasm and
# leaves linking of the SDK to nothing: the headers are all there is.
set(CMAKE_SYSTEM_NAME WASI)
set(CMAKE_SYSTEM_VERSION 1)
set(CMAKE_SYSTEM_PROCESSOR wasm32)
set(UNIX 1)

get_filename_component(EBB_TOOLCHAIN_DIR "${CMAKE_CURRENT_LIST_FILE}" DIRECTORY)
set(CMAKE_C_COMPILER "${EBB_TOOLCHAIN_DIR}/ebb-clang")
set(CMAKE_CXX_COMPILER "${EBB_TOOLCHAIN_DIR}/ebb-clang++")
set(CMAKE_ASM_COMPILER "${EBB_TOOLCHAIN_DIR}/ebb-clang")
set(CMAKE_AR llvm-ar-14 CACHE FILEPATH "archiver")
set(CMAKE_RANLIB llvm-ranlib-14 CACHE FILEPATH "ranlib")
set(CMAKE_CXX_STANDARD 17)
# Platform/WASI.cmake beside this file: executables are .wasm.
list(APPEND CMAKE_MODULE_PATH "${EBB_TOOLCHAIN_DIR}/cmake")
# The wrapper passes the target and sysroot itself; cmake's compiler checks would link a test
# program without Ebb's flags.
set(CMAKE_C_COMPILER_WORKS ON)
set(CMAKE_CXX_COMPILER_WORKS ON)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# Faasm's CMake projects call faasm_func / faasm_func_c; with Ebb they are plain executables.
function(faasm_func name file)
  add_executable(${name} ${file})
endfunction()
function(faasm_func_c name file)
  add_executable(${name} ${file})
endfunction()
