//! mailer: deliver a campaign's personalized letters over SMTP, exactly once.
pub mod cli;
pub mod clock;
pub mod config;
pub mod exit;
pub mod letter;
pub mod message;
pub mod roster;
pub mod secret;
