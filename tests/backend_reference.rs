//! The flex backend computes the committed reference outputs of one small model of each family
//! (tests/backends): the numbers `tests/wgpu.rs` holds the GPU backend to. Run with
//! `ZOO_WRITE_BACKEND_REFERENCE=1` to write them anew after a model changes on purpose.
#![cfg(feature = "flex")]

mod backends;

use backends::{compare, outputs, reference, reference_path};
use burn::prelude::*;

#[test]
fn flex_computes_the_committed_reference_outputs() {
    let ours = outputs(&Device::flex());
    if std::env::var_os("ZOO_WRITE_BACKEND_REFERENCE").is_some() {
        let text = serde_json::to_string(&ours).unwrap();
        std::fs::write(reference_path(), text + "\n").unwrap();
    }
    for (model, largest, scale) in compare(&ours, &reference()) {
        // Another CPU may pick other kernels (AVX2 or AVX-512): the last bits may differ.
        assert!(
            largest <= 1e-5 * scale.max(1.0),
            "{model}: flex differs from the reference by {largest} (values up to {scale})"
        );
    }
}
