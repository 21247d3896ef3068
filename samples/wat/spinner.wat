;; spinner: burns CPU forever without a single host call. Epoch
;; interruption makes it yield, and resources.limits.cpu throttles it.
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $spin (br $spin))))
