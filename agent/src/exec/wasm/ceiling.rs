//! The ceiling Stoa's launch path is measured against: what bare wasmtime
//! does per task — instantiate a `stoa:task` component from an
//! `InstancePre` and call `run` — on a plain engine with minimal WASI, no
//! fuel, no epochs, no limiter. Used by the runtime benchmark and by
//! `stoa bench`, so both report against the same thing.

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A component ready to instantiate again and again.
pub struct Ceiling {
    engine: Engine,
    pre: wasmtime::component::InstancePre<Bare>,
}

impl std::fmt::Debug for Ceiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ceiling").finish_non_exhaustive()
    }
}

impl Ceiling {
    /// Compiles `task` (a `stoa:task` component) on a pooled engine that
    /// resets memory the way Stoa's does, or on an on-demand one when
    /// `pooled` is false.
    pub fn new(task: &[u8], pooled: bool) -> wasmtime::Result<Ceiling> {
        let engine = if pooled {
            // The pool resets memory as Stoa's does, so the comparison is
            // of everything else.
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            super::reset_touched_pages_only(&mut pool);
            let mut config = wasmtime::Config::new();
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
            Engine::new(&config)?
        } else {
            Engine::default()
        };
        let mut linker: Linker<Bare> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let pre = linker.instantiate_pre(&Component::new(&engine, task)?)?;
        Ok(Ceiling { engine, pre })
    }

    /// One task: instantiate, call `run(input)`, drop. Returns the output.
    pub fn run_once(&self, input: &[u8]) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let mut store = Store::new(
            &self.engine,
            Bare {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        let instance = self.pre.instantiate(&mut store)?;
        let run =
            instance.get_typed_func::<(&[u8],), (Result<Vec<u8>, String>,)>(&mut store, "run")?;
        let (out,) = run.call(&mut store, (input,))?;
        Ok(out)
    }

    /// Tasks per second on one thread over about `duration`.
    pub fn rate(&self, input: &[u8], duration: std::time::Duration) -> wasmtime::Result<f64> {
        let start = std::time::Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            self.run_once(input)?
                .map_err(|e| wasmtime::format_err!("the task failed: {e}"))?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }
}
