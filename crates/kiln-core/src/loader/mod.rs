//! Loading, reloading and unloading model versions: the decision (`plan`), the
//! building of a version (`build`), the reconcile that ties them to the registry
//! (`reconcile`), poll mode (`poll`), the repository index (`index`), and why a
//! load failed (`error`).

mod build;
pub mod error;
mod index;
mod plan;
mod poll;
mod reconcile;

pub use error::{LoadError, VersionError};
pub use poll::PollState;
pub use reconcile::{ControlMode, LoadReport, Loader};
