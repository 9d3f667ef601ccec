//! Traffic between a model's versions: the policy and its split (`policy`),
//! choosing a request's version (`routing`), the traffic API (`api`), the health
//! windows and the watcher behind automatic canary rollback (`health`,
//! `rollback`), and shadow copies (`shadow`).

pub mod api;
pub mod health;
pub mod policy;
pub mod rollback;
pub mod routing;
pub mod shadow;
