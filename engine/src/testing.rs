//! Helpers for tests that need a GPU: on a machine without one they skip
//! with a visible message, unless `KILN_REQUIRE_GPU=1` (CI sets it), which
//! turns a missing adapter into a failure.

use crate::device::Device;

/// True when `KILN_REQUIRE_GPU` is set to something other than `0`.
pub fn gpu_required() -> bool {
    std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The best GPU, or `None` (after printing why) when there is none and
/// `KILN_REQUIRE_GPU` is unset.
///
/// # Panics
/// When no GPU opens and `KILN_REQUIRE_GPU=1`: in a test that is the failure
/// we want.
pub fn gpu_or_skip(test: &str) -> Option<Device> {
    match Device::open("gpu") {
        Ok(device) => Some(device),
        Err(e) if gpu_required() => panic!("{test}: KILN_REQUIRE_GPU=1 but no GPU opened: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {test} on GPU: {e} (set KILN_REQUIRE_GPU=1 to make this a failure)");
            None
        }
    }
}

/// Every device to test on: the CPU executor, plus the GPU when there is one.
pub fn devices(test: &str) -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    devices.extend(gpu_or_skip(test));
    devices
}
