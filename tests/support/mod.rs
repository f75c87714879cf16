pub mod campaign;
pub mod imap;
pub mod smtp;
