//! The payload of a Raft log entry written by a client request.
//!
//! Layout (a persisted format: every member must decode every entry ever committed):
//!
//! ```text
//! [format: u8 = 1][origin node id: u64 BE][request id: u64 BE][mvcc::Command encoding]
//! ```
//!
//! An entry with empty data is the no-op a new leader appends; it changes nothing. The origin
//! and request id let the member that received the client request find its waiter when it
//! applies the entry: every member applies every entry, but only the origin answers.

use mvcc::{Command, MvccError};

const FORMAT_V1: u8 = 1;
const HEADER_BYTES: usize = 1 + 8 + 8;

/// A decoded proposal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Proposal {
    /// The node that accepted the client request.
    pub origin: u64,
    /// Unique among the origin's requests.
    pub request_id: u64,
    /// What to apply.
    pub command: Command,
}

pub(crate) fn encode(origin: u64, request_id: u64, command: &Command) -> Vec<u8> {
    let body = command.encode();
    let mut data = Vec::with_capacity(HEADER_BYTES + body.len());
    data.push(FORMAT_V1);
    data.extend_from_slice(&origin.to_be_bytes());
    data.extend_from_slice(&request_id.to_be_bytes());
    data.extend_from_slice(&body);
    data
}

pub(crate) fn decode(data: &[u8]) -> Result<Proposal, MvccError> {
    if data.len() < HEADER_BYTES {
        return Err(MvccError::Storage(format!(
            "log entry of {} bytes is shorter than its header",
            data.len()
        )));
    }
    if data[0] != FORMAT_V1 {
        return Err(MvccError::Storage(format!(
            "log entry has unknown format {}",
            data[0]
        )));
    }
    let origin = u64::from_be_bytes(data[1..9].try_into().expect("8 bytes"));
    let request_id = u64::from_be_bytes(data[9..17].try_into().expect("8 bytes"));
    let command = Command::decode(&data[HEADER_BYTES..])?;
    Ok(Proposal {
        origin,
        request_id,
        command,
    })
}
