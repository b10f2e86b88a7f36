#![cfg(feature = "onnx")]
//! Heap allocations per inference, counted by a global allocator.
//!
//! This file is its own test binary so the counting allocator sees nothing but this
//! test; counting is per thread, so the test harness's own threads do not interfere.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use perch_runtime::engine::internal::{ArrayExt, ModelExt};
use perch_runtime::engine::{Golden, LoadOptions, Model};
use tract_core::plan::SimplePlan;
use tract_core::prelude::{tvec, IntoTValue};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counters are thread-local cells that
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn bump() {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.with(|a| a.get()))
}

const RUNS: u64 = 20;

#[test]
fn perch_adds_no_allocations_to_the_engines_own_per_run() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    println!(
        "{:<18} {:>14} {:>14}",
        "model", "tract / run", "perch / run"
    );
    for name in ["digits-mlp", "kws-dscnn", "anomaly-ae", "mobilenetv2-035"] {
        let dir = models.join(name);
        let golden = Golden::load(dir.join("golden")).unwrap();

        // The engine alone: its plan and state, with input tensors built outside the count.
        let model = Model::load(dir.join("model.onnx"), &LoadOptions::new()).unwrap();
        let plan = SimplePlan::new(model.optimized_model().clone()).unwrap();
        let mut state = plan.spawn().unwrap();
        let warm = |state: &mut tract_core::prelude::TypedSimpleState| {
            state
                .run(tvec![golden.inputs[0].tensor().clone().into_tvalue()])
                .unwrap();
        };
        warm(&mut state);
        let mut tract_total = 0;
        for _ in 0..RUNS {
            let inputs = tvec![golden.inputs[0].tensor().clone().into_tvalue()];
            let (outputs, n) = count(|| state.run(inputs).unwrap());
            drop(outputs);
            tract_total += n;
        }

        // Perch: validation, the input copy into the session's tensor, the run, the outputs.
        let mut session = model.session().unwrap();
        let inputs = golden.input_refs().unwrap();
        drop(session.run(&inputs).unwrap());
        let mut perch_total = 0;
        for _ in 0..RUNS {
            let (outputs, n) = count(|| session.run(&inputs).unwrap());
            assert_eq!(outputs.len(), 1);
            drop(outputs);
            perch_total += n;
        }

        let (tract, perch) = (tract_total / RUNS, perch_total / RUNS);
        println!("{name:<18} {tract:>14} {perch:>14}");
        assert!(
            perch_total <= tract_total,
            "{name}: Perch's run allocated {perch_total} times in {RUNS} runs, the engine alone {tract_total}"
        );
    }
}
