//! Encryption at rest.
//!
//! - [`keys`]: the key file (`--encryption-key-file`), key ids, sealing and opening.
//! - [`paged`]: a random-access file sealed in 4 KiB blocks (the state machine's database).
//! - [`framed`]: an append-only file sealed in frames (the Raft log, snapshot spools).
//!
//! The cipher is XChaCha20-Poly1305: an authenticated cipher whose 24-byte nonces can be
//! drawn without coordination between writers or processes. Every sealed unit records the id
//! of its key, so that keys rotate (new writes under the first key of the file, older data
//! opened with the key it names) and a wrong key is told apart from damage.
//!
//! Pure file formats over `std::fs`; the storage engines' adapters live with the engines'
//! users (`storage-disk`).

pub mod framed;
pub mod keys;
pub mod paged;

pub use framed::{FramedFile, FramedReader, StreamSealer};
pub use keys::{Key, KeyId, KeyRing};
pub use paged::{is_sealed, PagedFile};
