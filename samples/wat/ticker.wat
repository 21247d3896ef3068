;; ticker: prints "tick N" once a second, forever. Sleeps through
;; poll_oneoff on a relative clock, so an idle ticker costs no CPU.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 507) "tick ")
  ;; Writes the decimal digits of $n at 512.. and returns their count.
  (func $itoa (param $n i32) (result i32)
    (local $len i32) (local $i i32) (local $tmp i32)
    (if (i32.eqz (local.get $n))
      (then (i32.store8 (i32.const 512) (i32.const 48)) (return (i32.const 1))))
    (local.set $tmp (local.get $n))
    (block $done (loop $count
      (br_if $done (i32.eqz (local.get $tmp)))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (br $count)))
    (local.set $i (local.get $len))
    (block $done2 (loop $digits
      (br_if $done2 (i32.eqz (local.get $n)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 512) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br $digits)))
    (local.get $len))
  (func (export "_start")
    (local $n i32) (local $len i32)
    ;; subscription at 128: userdata 0, tag 0 (clock), id 1 (monotonic),
    ;; timeout 1s, precision 0, flags 0 (relative)
    (i64.store (i32.const 128) (i64.const 0))
    (i32.store8 (i32.const 136) (i32.const 0))
    (i32.store (i32.const 144) (i32.const 1))
    (i64.store (i32.const 152) (i64.const 1000000000))
    (i64.store (i32.const 160) (i64.const 0))
    (i32.store16 (i32.const 168) (i32.const 0))
    (loop $forever
      (local.set $len (call $itoa (local.get $n)))
      (i32.store8 (i32.add (i32.const 512) (local.get $len)) (i32.const 10))
      ;; one iovec over "tick " (at 507), the digits and the newline
      (i32.store (i32.const 0) (i32.const 507))
      (i32.store (i32.const 4) (i32.add (local.get $len) (i32.const 6)))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
      (drop (call $poll (i32.const 128) (i32.const 192) (i32.const 1) (i32.const 20)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $forever))))
