//! A child process a test started, killed and reaped when the test is done
//! with it, whether it passed or panicked.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// Owns a child process; dropping it kills the process and waits for it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}
