;; A WASI command that fills memory with a seeded pattern and verifies it on later runs.
;;
;; Layout: [0] run counter, [8] seed, [16] bytes in area A (set by the host; default 64 MiB),
;; area A at 64 KiB; area B (16 MiB, created by memory.grow on the second run) right after area A.
;; Run 1 fills A. Run 2 verifies A, grows the memory and fills B. Later runs verify A and B.
;; Word w of an area holds (w * 0x9E3779B1) ^ seed (seed + 1 for area B). Exit code 0 when every
;; word matches, 3 when A is wrong, 4 when B is wrong, 5 when memory.grow failed.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1025)
  (func $fill (param $base i32) (param $len i32) (param $seed i32)
    (local $w i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (i32.shl (local.get $w) (i32.const 2)) (local.get $len)))
        (i32.store
          (i32.add (local.get $base) (i32.shl (local.get $w) (i32.const 2)))
          (i32.xor (i32.mul (local.get $w) (i32.const 0x9E3779B1)) (local.get $seed)))
        (local.set $w (i32.add (local.get $w) (i32.const 1)))
        (br $next))))
  (func $check (param $base i32) (param $len i32) (param $seed i32) (result i32)
    (local $w i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (i32.shl (local.get $w) (i32.const 2)) (local.get $len)))
        (if (i32.ne
              (i32.load (i32.add (local.get $base) (i32.shl (local.get $w) (i32.const 2))))
              (i32.xor (i32.mul (local.get $w) (i32.const 0x9E3779B1)) (local.get $seed)))
          (then (return (i32.const 0))))
        (local.set $w (i32.add (local.get $w) (i32.const 1)))
        (br $next)))
    (i32.const 1))
  (func (export "_start")
    (local $run i32) (local $len i32) (local $b i32)
    (local.set $run (i32.load (i32.const 0)))
    (i32.store (i32.const 0) (i32.add (local.get $run) (i32.const 1)))
    (local.set $len (i32.load (i32.const 16)))
    (if (i32.eqz (local.get $len)) (then (local.set $len (i32.const 0x4000000))))
    (local.set $b (i32.add (i32.const 65536) (local.get $len)))
    (if (i32.eqz (local.get $run))
      (then (call $fill (i32.const 65536) (local.get $len) (i32.load (i32.const 8))) (return)))
    (if (i32.eqz (call $check (i32.const 65536) (local.get $len) (i32.load (i32.const 8))))
      (then (call $exit (i32.const 3))))
    (if (i32.eq (local.get $run) (i32.const 1))
      (then
        ;; Grow enough to hold B (16 MiB = 256 pages) past the end of A.
        (local.set $run (i32.sub (i32.add (i32.shr_u (local.get $b) (i32.const 16)) (i32.const 256)) (memory.size)))
        (if (i32.gt_s (local.get $run) (i32.const 0))
          (then
            (if (i32.lt_s (memory.grow (local.get $run)) (i32.const 0))
              (then (call $exit (i32.const 5))))))
        (call $fill (local.get $b) (i32.const 0x1000000) (i32.add (i32.load (i32.const 8)) (i32.const 1)))
        (return)))
    (if (i32.gt_u (i32.mul (memory.size) (i32.const 65536)) (local.get $b))
      (then
        (if (i32.eqz (call $check (local.get $b) (i32.const 0x1000000) (i32.add (i32.load (i32.const 8)) (i32.const 1))))
          (then (call $exit (i32.const 4))))))))
