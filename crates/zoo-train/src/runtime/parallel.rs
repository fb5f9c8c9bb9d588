//! Data parallelism: a step's micro-batches spread over several devices (`zoo train --devices
//! cuda:0,cuda:1`). Each batch of the recipe is cut into one micro-batch per device (made on
//! that device by the loader); every device runs forward and backward on a replica of the
//! model, and the gradients are gathered and summed on the first device, which holds the
//! model, the optimiser and validation, clips and applies the step, and hands the new weights
//! to the replicas of the next round. PyTorch's `DataParallel` works the same way, and so does
//! burn-train's multi-device strategy with the optimiser on the main device.
//!
//! Why not all-reduce (burn-train's `ExecutionStrategy::ddp`): in Burn 0.22 only CUDA has
//! collective operations (NCCL); flex, ndarray and wgpu leave `all_reduce` unimplemented. And
//! burn-train's strategies replace the zoo's training loop, with its summed-then-clipped
//! accumulation, non-finite checks and per-micro-batch seeding. Gathering needs nothing of a
//! backend beyond moving a tensor between its devices, so it runs everywhere, and the step is
//! exactly the one-device step with `devices x grad_accumulation` micro-batches.
//!
//! A round is launched from one thread: every replica is made first, then each device's work
//! is queued, and only then are the gradients moved, so that on an asynchronous backend (a
//! GPU) the devices compute side by side while their results are gathered in a fixed order.
//! Randomness (dropout) is seeded per micro-batch before its forward pass, as on one device.

use crate::runtime::step::StepOutput;
use burn::prelude::*;
use burn::train::{LearnerModel, TrainOutput, TrainStep};

/// What the command line knows and the runtime does not: the device a name such as `cuda:1`
/// stands for in this binary (which backends are compiled in).
pub type DeviceResolver = fn(&str) -> Result<Device, String>;

/// The devices `names` stand for, the first being the main one; an error names a device that
/// does not resolve, or two backends in one list.
pub fn resolve_devices(names: &[String], resolve: DeviceResolver) -> Result<Vec<Device>, String> {
    let backend = |name: &str| {
        name.split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    if let Some(first) = names.first()
        && let Some(other) = names.iter().find(|n| backend(n) != backend(first))
    {
        return Err(format!(
            "'{first}' and '{other}' are devices of two backends; data parallelism splits a batch across devices of one"
        ));
    }
    names.iter().map(|name| resolve(name)).collect()
}

/// One round of a data-parallel step: micro-batch `i` of `batches` (made on `devices[i]`) runs
/// forward and backward on a replica of `model` there, seeded by `seed(i)` first. The outputs
/// come back in order with their gradients and loss on the main device, `devices[0]`.
pub fn train_round<M>(
    model: &M,
    devices: &[Device],
    batches: Vec<<M as TrainStep>::Input>,
    mut seed: impl FnMut(usize),
) -> Vec<TrainOutput<<M as TrainStep>::Output>>
where
    M: LearnerModel,
    <M as TrainStep>::Output: StepOutput,
{
    assert!(
        batches.len() <= devices.len(),
        "a round has at most one micro-batch per device"
    );
    // Every replica first: a copy of the weights made after work is queued would wait for it.
    let replicas: Vec<M> = devices[..batches.len()]
        .iter()
        .enumerate()
        .map(|(i, device)| match i {
            0 => model.clone(),
            _ => model.clone().fork(device),
        })
        .collect();
    let outputs: Vec<_> = batches
        .into_iter()
        .zip(&replicas)
        .enumerate()
        .map(|(i, (batch, replica))| {
            seed(i);
            TrainStep::step(replica, batch)
        })
        .collect();
    let main = &devices[0];
    outputs
        .into_iter()
        .enumerate()
        .map(|(i, mut output)| {
            if i > 0 {
                output.grads = output.grads.to_device(main, model);
                let loss = output.item.loss_mut();
                *loss = loss.clone().to_device(main);
            }
            output
        })
        .collect()
}
