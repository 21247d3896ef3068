;; The smallest wasi:http handler: answers every request with 200 and a
;; fixed greeting. orchestrator/build.rs wraps it into a component with
;; samples/wit/http-hello.wit (canonical ABI below), so the demo serves HTTP
;; with no guest toolchain, and the gateway benchmark can tell the host's
;; per-request cost from a guest language's start-up.
(module
  (import "wasi:http/types@0.2.0" "[resource-drop]incoming-request"
    (func $drop_request (param i32)))
  (import "wasi:http/types@0.2.0" "[constructor]fields"
    (func $fields_new (result i32)))
  (import "wasi:http/types@0.2.0" "[constructor]outgoing-response"
    (func $response_new (param i32) (result i32)))
  (import "wasi:http/types@0.2.0" "[method]outgoing-response.set-status-code"
    (func $set_status (param i32 i32) (result i32)))
  (import "wasi:http/types@0.2.0" "[method]outgoing-response.body"
    (func $response_body (param i32 i32)))
  (import "wasi:http/types@0.2.0" "[method]outgoing-body.write"
    (func $body_write (param i32 i32)))
  (import "wasi:http/types@0.2.0" "[static]outgoing-body.finish"
    (func $body_finish (param i32 i32 i32 i32)))
  ;; result<outgoing-response, error-code>, flattened: the outparam, the
  ;; result's case, then the joined payload slots.
  (import "wasi:http/types@0.2.0" "[static]response-outparam.set"
    (func $outparam_set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.0" "[method]output-stream.blocking-write-and-flush"
    (func $write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.0" "[resource-drop]output-stream"
    (func $drop_stream (param i32)))

  (memory (export "memory") 1)
  ;; Results come back through this slot: the case at 0, the value at 4.
  (global $ret i32 (i32.const 16))
  (data (i32.const 64) "hello from Shoal\n")

  ;; The handle a `result<own<T>>` left in the slot, or a trap.
  (func $ok (result i32)
    (if (i32.ne (i32.load8_u (global.get $ret)) (i32.const 0))
      (then unreachable))
    (i32.load offset=4 (global.get $ret)))

;; The canonical ABI asks for an allocator; nothing this module calls
  ;; returns a list, so a bump allocator over the one page is plenty (each
  ;; request gets a fresh instance).
  (global $heap (mut i32) (i32.const 1024))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $at i32)
    (if (i32.ne (local.get 0) (i32.const 0)) (then unreachable))
    (local.set $at (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
      (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $at) (local.get 3)))
    (if (i32.gt_u (global.get $heap) (i32.const 65536)) (then unreachable))
    (local.get $at))

  (func (export "wasi:http/incoming-handler@0.2.0#handle") (param $request i32) (param $out i32)
    (local $response i32) (local $body i32) (local $stream i32)
    (call $drop_request (local.get $request))
    (local.set $response (call $response_new (call $fields_new)))
    (drop (call $set_status (local.get $response) (i32.const 200)))
    (call $response_body (local.get $response) (global.get $ret))
    (local.set $body (call $ok))
    (call $body_write (local.get $body) (global.get $ret))
    (local.set $stream (call $ok))
    (call $outparam_set (local.get $out) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $write (local.get $stream) (i32.const 64) (i32.const 17) (global.get $ret))
    (call $drop_stream (local.get $stream))
    (call $body_finish (local.get $body) (i32.const 0) (i32.const 0) (global.get $ret)))
)
