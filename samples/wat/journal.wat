;; journal: counts its own starts in the file "journal" of its first mounted
;; directory (a persistent volume in the demo). It reads the file, counting
;; its lines, appends "start N" (N = lines + 1), prints that line, then
;; sleeps until stopped. Replace the pod and the count goes on.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "journal")
  (data (i32.const 256) "journal: cannot open \"journal\" in the first mounted directory\n")
  (data (i32.const 507) "start ")
  ;; Writes the decimal digits of $n at 513.. and returns their count.
  (func $itoa (param $n i32) (result i32)
    (local $len i32) (local $i i32) (local $tmp i32)
    (local.set $tmp (local.get $n))
    (block $done (loop $count
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $tmp (i32.div_u (local.get $tmp) (i32.const 10)))
      (br_if $count (i32.ne (local.get $tmp) (i32.const 0)))))
    (local.set $i (local.get $len))
    (block $done2 (loop $digits
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (i32.const 513) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digits (i32.ne (local.get $i) (i32.const 0)))))
    (local.get $len))
  ;; Writes $len bytes at $ptr to $fd.
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16))))
  (func (export "_start")
    (local $fd i32) (local $read i32) (local $lines i32) (local $i i32) (local $len i32)
    ;; open (creating) "journal" under the first preopen, fd 3, for reading
    ;; and writing (rights: read, seek, tell, write)
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 32) (i32.const 7) (i32.const 1)
                    (i64.const 0x66) (i64.const 0) (i32.const 0) (i32.const 24))
      (then (call $write (i32.const 2) (i32.const 256) (i32.const 62)) (call $exit (i32.const 2))))
    (local.set $fd (i32.load (i32.const 24)))
    ;; count the lines already there; reading leaves the offset at the end
    (block $eof (loop $chunk
      (i32.store (i32.const 8) (i32.const 4096))
      (i32.store (i32.const 12) (i32.const 4096))
      (drop (call $fd_read (local.get $fd) (i32.const 8) (i32.const 1) (i32.const 28)))
      (local.set $read (i32.load (i32.const 28)))
      (br_if $eof (i32.eqz (local.get $read)))
      (local.set $i (i32.const 0))
      (block $scanned (loop $scan
        (br_if $scanned (i32.ge_u (local.get $i) (local.get $read)))
        (if (i32.eq (i32.load8_u (i32.add (i32.const 4096) (local.get $i))) (i32.const 10))
          (then (local.set $lines (i32.add (local.get $lines) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
      (br $chunk)))
    ;; "start N\n" at 507: appended to the journal, and printed
    (local.set $len (call $itoa (i32.add (local.get $lines) (i32.const 1))))
    (i32.store8 (i32.add (i32.const 513) (local.get $len)) (i32.const 10))
    (call $write (local.get $fd) (i32.const 507) (i32.add (local.get $len) (i32.const 7)))
    (call $write (i32.const 1) (i32.const 507) (i32.add (local.get $len) (i32.const 7)))
    ;; sleep an hour at a time, forever (see ticker.wat for the layout)
    (i64.store (i32.const 128) (i64.const 0))
    (i32.store8 (i32.const 136) (i32.const 0))
    (i32.store (i32.const 144) (i32.const 1))
    (i64.store (i32.const 152) (i64.const 3600000000000))
    (i64.store (i32.const 160) (i64.const 0))
    (i32.store16 (i32.const 168) (i32.const 0))
    (loop $forever
      (drop (call $poll (i32.const 128) (i32.const 192) (i32.const 1) (i32.const 20)))
      (br $forever))))
