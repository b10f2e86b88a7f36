#!/usr/bin/env bash
# Builds the microcontroller example for QEMU and runs it on an emulated STM32F405
# (board netduinoplus2, a Cortex-M4F; package qemu-system-arm). It prints its canary
# buckets, latency quantiles, the encoded metrics report and its peak stack use over
# semihosting, and exits 0 if the report decoded back to itself.
#
# -icount shift=0 runs one instruction per virtual nanosecond, so the SysTick timings
# count instructions and the output is the same on every host.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --target thumbv7em-none-eabihf --features qemu
exec timeout 60 qemu-system-arm -M netduinoplus2 -nographic -icount shift=0 \
    -semihosting-config enable=on,target=native \
    -kernel target/thumbv7em-none-eabihf/release/perch-mcu
