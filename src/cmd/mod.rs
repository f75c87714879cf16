//! One module per subcommand: load → plan → act → report.
pub mod bounces;
pub mod check;
pub mod export;
pub mod init;
pub mod preview;
pub mod send;
pub mod status;
