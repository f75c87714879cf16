//! One module per subcommand: load → plan → act → report.
pub mod check;
pub mod export;
pub mod init;
pub mod preview;
pub mod requeue;
pub mod send;
pub mod skip;
pub mod status;
