//! What the training loop learns of each validation from the metrics log. burn-train computes
//! validation metrics and hands them to the metrics logger on threads of its own, so the loop
//! may reach its next step before the logger has seen the validation: the logger marks each
//! validation once it has taken it in (told the plateau, told early stopping), and the loop
//! waits for that mark before it decides anything that depends on it (the next step's rate,
//! whether to stop). Without the wait, a run under load could anneal or stop a step late, and
//! two runs of the same recipe would differ.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The last validation (epoch) the metrics logger has taken in.
#[derive(Clone, Debug, Default)]
pub struct Validations(Arc<(Mutex<usize>, Condvar)>);

/// How long the loop waits for the logger before going on without it: far longer than any
/// logger takes, short enough that a logger that failed does not hang a run.
const PATIENCE: Duration = Duration::from_secs(600);

impl Validations {
    /// The logger has taken in epoch `epoch`'s validation.
    pub fn logged(&self, epoch: usize) {
        let (last, changed) = &*self.0;
        let mut last = last.lock().expect("validations lock");
        *last = (*last).max(epoch);
        changed.notify_all();
    }

    /// Waits until epoch `epoch`'s validation has been taken in.
    pub fn wait_for(&self, epoch: usize) {
        let (last, changed) = &*self.0;
        let last = last.lock().expect("validations lock");
        let _ = changed
            .wait_timeout_while(last, PATIENCE, |last| *last < epoch)
            .expect("validations lock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_ends_when_the_epoch_is_logged_on_another_thread() {
        let validations = Validations::default();
        let logger = validations.clone();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            logger.logged(1);
            std::thread::sleep(Duration::from_millis(50));
            logger.logged(2);
        });
        validations.wait_for(2);
        assert_eq!(*validations.0.0.lock().unwrap(), 2);
        validations.wait_for(1);
        handle.join().unwrap();
    }
}
