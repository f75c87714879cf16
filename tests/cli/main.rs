//! Integration tests: the real `mailer` binary, real files, real SMTP sockets.
#![allow(unreachable_pub)] // test-support modules are `pub` for each other, not for export
#[path = "../support/mod.rs"]
mod support;

mod delivery;
