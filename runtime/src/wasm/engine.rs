//! The node's one wasmtime engine, sized for thousands of small sandboxes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of CPU budgets and of
/// how quickly a spinning guest yields to its neighbours.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Engine sizing. Slots are reserved address space, not memory: an idle
/// slot costs a few pages of bookkeeping.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Sandboxes that may exist at once on this node.
    pub max_instances: u32,
    /// Ceiling on any one sandbox's linear memory; a pod asking more is
    /// refused with a clear message.
    pub max_memory_bytes: u64,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            max_instances: 20_000,
            max_memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Core instances and memories per sandbox: a WASI 0.2 command built from a
/// preview-1 module carries the adapter's instances and memory besides the
/// program's own.
const CORE_INSTANCES_PER_SANDBOX: u32 = 8;
const MEMORIES_PER_SANDBOX: u32 = 2;

pub(crate) fn build(cfg: &WasmConfig) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    let n = cfg.max_instances.max(1);
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_SANDBOX))
        .total_memories(n.saturating_mul(MEMORIES_PER_SANDBOX))
        .total_tables(n.saturating_mul(MEMORIES_PER_SANDBOX))
        .total_stacks(n)
        .max_memory_size(usize::try_from(cfg.max_memory_bytes).unwrap_or(usize::MAX))
        .max_memories_per_component(CORE_INSTANCES_PER_SANDBOX)
        .max_tables_per_component(CORE_INSTANCES_PER_SANDBOX)
        .max_core_instances_per_component(CORE_INSTANCES_PER_SANDBOX * 2)
        // Keep a few warm slots, not thousands: warm slots hold memory.
        .max_unused_warm_slots(64)
        // HTTP handlers free a sandbox per request. Resetting the first MiB
        // of a freed memory with memset, and finding its dirty pages with
        // PAGEMAP_SCAN where the kernel has it, keeps the next request free
        // of the madvise, TLB shoot-downs and page faults that dominated a
        // request's cost (profiled: ~40% of the gateway's CPU).
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto)
        .decommit_batch_size(16);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .memory_init_cow(true)
        // A reservation the size of the largest memory, not the 4 GiB
        // default, so tens of thousands of slots fit in the address space.
        .memory_reservation(cfg.max_memory_bytes)
        .memory_guard_size(64 * 1024)
        .memory_reservation_for_growth(0)
        .async_stack_size(1024 * 1024)
        .max_wasm_stack(512 * 1024)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Advances the engine's epoch every tick until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> std::io::Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
