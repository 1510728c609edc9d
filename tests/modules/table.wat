;; A Faasm-style function with an initial state: `_faasm_zygote` fills a 64 MiB table with a
;; pattern (word w = w * 0x9E3779B1 ^ 1). Each call checksums the table (xor of all words), counts
;; itself in a mutable global, and writes [checksum, calls] (two little-endian u32) as its output.
;; With the input "scribble" it then overwrites the whole table and the global: the next call must
;; still see the initial state (checksum unchanged, calls = 1).
(module
  (import "env" "__faasm_read_input" (func $read_input (param i32 i32) (result i32)))
  (import "env" "__faasm_write_output" (func $write_output (param i32 i32)))
  (memory (export "memory") 1025)
  (global $calls (mut i32) (i32.const 0))
  (func (export "_faasm_zygote") (result i32)
    (local $w i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $w) (i32.const 0x1000000)))
        (i32.store (i32.add (i32.const 65536) (i32.shl (local.get $w) (i32.const 2)))
          (i32.xor (i32.mul (local.get $w) (i32.const 0x9E3779B1)) (i32.const 1)))
        (local.set $w (i32.add (local.get $w) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  (func (export "_start")
    (local $w i32) (local $sum i32) (local $n i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $w) (i32.const 0x1000000)))
        (local.set $sum (i32.xor (local.get $sum)
          (i32.load (i32.add (i32.const 65536) (i32.shl (local.get $w) (i32.const 2))))))
        (local.set $w (i32.add (local.get $w) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 0) (local.get $sum))
    (i32.store (i32.const 4) (global.get $calls))
    (call $write_output (i32.const 0) (i32.const 8))
    ;; Input "scribble" (8 bytes) → overwrite the table and the counter.
    (local.set $n (call $read_input (i32.const 16) (i32.const 16)))
    (if (i32.and (i32.eq (local.get $n) (i32.const 8))
                 (i64.eq (i64.load (i32.const 16)) (i64.const 0x656c626269726373)))
      (then
        (local.set $w (i32.const 0))
        (block $d2
          (loop $n2
            (br_if $d2 (i32.ge_u (local.get $w) (i32.const 0x1000000)))
            (i32.store (i32.add (i32.const 65536) (i32.shl (local.get $w) (i32.const 2))) (i32.const 0xdeadbeef))
            (local.set $w (i32.add (local.get $w) (i32.const 1)))
            (br $n2)))
        (global.set $calls (i32.const 1000))))))
