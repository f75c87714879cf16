pub mod campaign;
pub mod smtp;
