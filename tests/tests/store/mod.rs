//! The event log's guarantees (DESIGN §3), each against a real sled directory.

mod appends;
mod chunks;
mod concurrency;
mod crash;
mod faults;
mod reads;
mod sealing;
mod verify;
mod wal;
