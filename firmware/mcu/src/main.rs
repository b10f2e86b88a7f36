//! perch-runtime's `no_std` core on a Cortex-M4F microcontroller, with no allocator.
//!
//! What a sensor node does with the core, once per reporting interval:
//!
//! 1. decides from its device id whether it is in a rollout's canary cohort
//!    (`canary::bucket`, `canary::in_cohort`);
//! 2. times each run of its on-chip model with the SysTick timer and records the
//!    latencies in a `Histogram` (288 bytes, no heap);
//! 3. encodes a `MetricsReport` with postcard into a stack buffer of
//!    `MetricsReport::MAX_ENCODED_LEN` bytes, ready for the radio or a UART, and checks
//!    that it decodes back to the same report.
//!
//! The "model" is an int8 dense layer (64 inputs, 10 classes) with fixed weights, the
//! size of Perch's R1 digits classifier, computed in plain integer arithmetic: the point
//! is the bookkeeping around it, which is exactly what a device built on the core runs.
//!
//! With the `qemu` feature the program prints what it computed over semihosting and
//! exits; without it (a flash image) it keeps the report for the transport and sleeps.
#![no_std]
#![no_main]

use core::time::Duration;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::entry;
use panic_halt as _;
use perch_runtime::canary::{self, Percent};
use perch_runtime::histogram::Histogram;
use perch_runtime::wire::{MetricsReport, ModelId, Version, FORMAT_VERSION};

/// Core clock the SysTick counts, in Hz: an STM32F401 runs from its 16 MHz internal
/// oscillator after reset (this program does not start the PLL); QEMU's STM32F405
/// board clocks its core at 168 MHz.
#[cfg(not(feature = "qemu"))]
const CORE_HZ: u64 = 16_000_000;
#[cfg(feature = "qemu")]
const CORE_HZ: u64 = 168_000_000;

/// SysTick is a 24-bit down-counter; intervals are measured modulo its period.
const SYST_MASK: u32 = 0x00FF_FFFF;

/// This device's id. A real node would derive it from the chip's unique id.
const DEVICE_ID: &[u8] = b"pump-07";

/// Rollouts the device checks its cohort for, and the share each one targets.
const ROLLOUTS: [(&[u8], u8); 3] = [(b"kws-1.1.0", 10), (b"ae-2.0.0", 50), (b"fw-0.9.3", 100)];

/// Inferences per reporting interval.
const RUNS: u32 = 500;

const INPUTS: usize = 64;
const CLASSES: usize = 10;

/// Fixed int8 weights from a linear congruential generator, computed at compile time
/// so they live in flash.
const WEIGHTS: [[i8; INPUTS]; CLASSES] = weights();

const fn weights() -> [[i8; INPUTS]; CLASSES] {
    let mut w = [[0i8; INPUTS]; CLASSES];
    let mut state: u32 = 0x2545_f491;
    let mut c = 0;
    while c < CLASSES {
        let mut i = 0;
        while i < INPUTS {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            w[c][i] = (state >> 24) as i8;
            i += 1;
        }
        c += 1;
    }
    w
}

/// The on-chip model: an int8 dense layer, returning the winning class.
fn infer(input: &[i8; INPUTS]) -> usize {
    let mut best = (0, i32::MIN);
    for (class, row) in WEIGHTS.iter().enumerate() {
        let score: i32 = row
            .iter()
            .zip(input)
            .map(|(&w, &x)| i32::from(w) * i32::from(x))
            .sum();
        if score > best.1 {
            best = (class, score);
        }
    }
    best.0
}

/// Prints over semihosting under QEMU; compiled out of a flash image.
#[cfg(feature = "qemu")]
macro_rules! say {
    ($($arg:tt)*) => { cortex_m_semihosting::hprintln!($($arg)*) };
}
#[cfg(not(feature = "qemu"))]
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = format_args!($($arg)*);
    }};
}

/// Stops: under QEMU, exits with `ok` as the status; on a board, sleeps (the report
/// has been handed to the transport).
fn finish(ok: bool) -> ! {
    #[cfg(feature = "qemu")]
    {
        use cortex_m_semihosting::debug;
        debug::exit(if ok {
            debug::EXIT_SUCCESS
        } else {
            debug::EXIT_FAILURE
        });
    }
    let _ = ok;
    loop {
        cortex_m::asm::wfi();
    }
}

/// Peak stack use, measured under QEMU by painting the free stack at start and finding
/// the deepest overwritten word at the end (nothing else uses RAM: no heap, 4 bytes of
/// statics).
#[cfg(feature = "qemu")]
mod stack {
    const PAINT: u32 = 0x5EED_5EED;

    extern "C" {
        static _stack_end: u32;
        static _stack_start: u32;
    }

    fn bottom() -> usize {
        core::ptr::addr_of!(_stack_end) as usize
    }

    /// Paints every word between the bottom of the stack and 64 bytes below the
    /// current stack pointer.
    pub fn paint() {
        let limit = cortex_m::register::msp::read() as usize - 64;
        let mut p = bottom();
        while p < limit {
            // SAFETY: [_stack_end, sp - 64) is stack nobody uses yet (no interrupts
            // are enabled), word-aligned inside RAM.
            unsafe { (p as *mut u32).write_volatile(PAINT) };
            p += 4;
        }
    }

    /// Bytes between the top of RAM and the deepest word written since `paint`.
    pub fn peak() -> usize {
        let mut p = bottom();
        // SAFETY: reads words of RAM between _stack_end and the stack top.
        while unsafe { (p as *const u32).read_volatile() } == PAINT {
            p += 4;
        }
        core::ptr::addr_of!(_stack_start) as usize - p
    }
}

/// Core clock cycles to nanoseconds.
fn cycles_to_ns(cycles: u32) -> u64 {
    u64::from(cycles) * 1_000_000_000 / CORE_HZ
}

#[entry]
fn main() -> ! {
    #[cfg(feature = "qemu")]
    stack::paint();
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        finish(false)
    };
    let mut syst = peripherals.SYST;
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(SYST_MASK);
    syst.clear_current();
    syst.enable_counter();

    // 1. Canary cohorts: the same answer the fleet's host tools compute for this id.
    let mut cohorts = 0u8; // bit i: in rollout i's cohort, for the update logic
    for (i, (rollout, percent)) in ROLLOUTS.into_iter().enumerate() {
        let Ok(share) = Percent::from_whole(percent) else {
            finish(false)
        };
        let bucket = canary::bucket(DEVICE_ID, rollout);
        let member = canary::in_cohort(DEVICE_ID, rollout, share);
        cohorts |= u8::from(member) << i;
        say!(
            "canary {}: bucket {} of {}, {}% rollout: {}",
            core::str::from_utf8(rollout).unwrap_or("?"),
            bucket,
            canary::BUCKETS,
            percent,
            if member { "in cohort" } else { "not in cohort" }
        );
    }

    core::hint::black_box(cohorts);

    // 2. Time every inference into the histogram.
    let mut latency = Histogram::new();
    let mut input = [0i8; INPUTS];
    let mut votes = [0u32; CLASSES];
    let mut busy_cycles: u64 = 0;
    for run in 0..RUNS {
        for (i, x) in input.iter_mut().enumerate() {
            *x = (run as usize).wrapping_mul(31).wrapping_add(i * 7) as i8;
        }
        let start = SYST::get_current();
        let class = infer(core::hint::black_box(&input));
        let end = SYST::get_current();
        let cycles = start.wrapping_sub(end) & SYST_MASK;
        busy_cycles += u64::from(cycles);
        latency.record_ns(cycles_to_ns(cycles));
        votes[class] += 1;
    }
    let q = |p: f64| latency.quantile(p).unwrap_or(Duration::ZERO);
    say!(
        "{} inferences: p50 {:?}, p95 {:?}, p99 {:?}; classes {:?}",
        latency.count(),
        q(0.5),
        q(0.95),
        q(0.99),
        votes
    );

    // 3. The metrics report, in a stack buffer. A busier interval than a report can
    //    hold (16 383 samples per bucket) would go out as several chunks.
    let Ok(model) = ModelId::new("digits-int8", Version::new(1, 0, 0)) else {
        finish(false)
    };
    let mut seq = 1;
    let mut ok = true;
    while !latency.is_empty() {
        let chunk = latency.take_report_chunk();
        let report = MetricsReport {
            format: FORMAT_VERSION,
            seq,
            uptime_s: 0,
            interval_ms: u32::try_from(busy_cycles * 1000 / CORE_HZ).unwrap_or(u32::MAX),
            model: model.clone(),
            ok: u32::try_from(chunk.count()).unwrap_or(u32::MAX),
            errors: 0,
            latency: chunk,
        };
        let mut buf = [0u8; MetricsReport::MAX_ENCODED_LEN];
        let Ok(bytes) = report.encode(&mut buf) else {
            say!("report {} does not encode", seq);
            finish(false)
        };
        let bytes: &[u8] = bytes;
        let round_trip = MetricsReport::decode(bytes).is_ok_and(|back| back == report);
        ok &= round_trip;
        say!(
            "report {}: {} bytes (at most {}), decodes back: {}",
            seq,
            bytes.len(),
            MetricsReport::MAX_ENCODED_LEN,
            round_trip
        );
        #[cfg(feature = "qemu")]
        {
            for b in bytes {
                cortex_m_semihosting::hprint!("{:02x}", b);
            }
            cortex_m_semihosting::hprintln!();
        }
        // The transport (UART, radio) would take `bytes` here.
        core::hint::black_box(bytes);
        seq += 1;
    }
    #[cfg(feature = "qemu")]
    say!("peak stack: {} bytes", stack::peak());
    finish(ok)
}
