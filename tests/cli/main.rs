//! Integration tests: the real `mailer` binary, real files, real SMTP sockets.
#![allow(unreachable_pub)] // test-support modules are `pub` for each other, not for export
#![allow(clippy::disallowed_methods)] // tests may sleep and read the real clock
#[path = "../support/mod.rs"]
mod support;

mod bounces;
mod bounces_hostile;
mod check_speed;
mod delivery;
mod edges_files;
mod edges_letters;
mod edges_roster;
mod edges_run;
mod edges_wire;
mod engine;
mod first_hour;
mod first_hour2;
mod first_hour3;
mod first_hour4;
mod follow;
mod hold_one_letter;
mod hostile_files;
mod inputs;
mod nothing_to_send;
mod one_of_headers;
mod reports;
mod review2;
mod routing;
mod schedule;
mod security;
mod sync_cost;
mod terminal;
mod variants;
