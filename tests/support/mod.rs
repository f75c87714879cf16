pub mod campaign;
pub mod hostile_imap;
pub mod imap;
pub mod pty;
pub mod relays;
pub mod smtp;
pub mod wait;
