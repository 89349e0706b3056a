//! The key file (`--encryption-key-file`) and the keys it holds.
//!
//! # Format
//!
//! One key a line: 64 hexadecimal digits (32 bytes). Blank lines and lines starting with `#`
//! are ignored. The first key seals everything written from now on; the others only open
//! what they sealed before. To rotate, put a new key on the first line and keep the old ones
//! below it until nothing sealed with them is left (the log's files are replaced as it is
//! compacted; `etcdctl defrag` rewrites the state file).
//!
//! A key is named by its id: the first four bytes of SHA-256 over a fixed label and the key.
//! Every sealed block and frame records the id of its key, so that a wrong or missing key is
//! told apart from a damaged file.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// Bytes in a key.
pub const KEY_LEN: usize = 32;
/// Bytes in a nonce (XChaCha20-Poly1305's extended nonce).
pub const NONCE_LEN: usize = 24;
/// Bytes in an authentication tag.
pub const TAG_LEN: usize = 16;
/// Most keys a key file may hold.
pub const MAX_KEYS: usize = 64;

/// A key's name, as recorded next to everything it seals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// One key and its cipher.
pub struct Key {
    id: KeyId,
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key itself.
        write!(f, "Key({})", self.id)
    }
}

/// Nonces: a random 16-byte prefix drawn once per process, then a counter. XChaCha20's
/// 24-byte nonce leaves room for both, so a nonce is never reused under a key unless two
/// processes draw the same 128-bit prefix.
struct NonceSource {
    prefix: [u8; 16],
    counter: AtomicU64,
}

fn next_nonce() -> XNonce {
    static SOURCE: OnceLock<NonceSource> = OnceLock::new();
    let source = SOURCE.get_or_init(|| {
        let mut prefix = [0u8; 16];
        getrandom::getrandom(&mut prefix).expect("the operating system's random source works");
        NonceSource {
            prefix,
            counter: AtomicU64::new(0),
        }
    });
    let count = source.counter.fetch_add(1, Ordering::Relaxed);
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..16].copy_from_slice(&source.prefix);
    nonce[16..].copy_from_slice(&count.to_le_bytes());
    nonce.into()
}

impl Key {
    /// A key from its bytes.
    #[must_use]
    pub fn new(bytes: &[u8; KEY_LEN]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"concord encryption key id\0");
        hasher.update(bytes);
        let digest = hasher.finalize();
        Self {
            id: KeyId(u32::from_be_bytes(
                digest[..4].try_into().expect("SHA-256 has 32 bytes"),
            )),
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }

    /// The key's id.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Encrypts `data` in place under a fresh nonce, binding `aad`; returns nonce and tag.
    pub fn seal(&self, aad: &[u8], data: &mut [u8]) -> ([u8; NONCE_LEN], [u8; TAG_LEN]) {
        let nonce = next_nonce();
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce, aad, data)
            .expect("XChaCha20-Poly1305 seals any length this crate writes");
        (nonce.into(), tag.into())
    }

    /// Decrypts `data` in place if `tag` proves it was sealed by this key with `nonce` and
    /// `aad`; otherwise leaves it unusable and returns false.
    #[must_use]
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        self.cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, data, Tag::from_slice(tag))
            .is_ok()
    }
}

/// The keys of a key file: the first seals, all open.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// Reads a key file.
    ///
    /// # Errors
    /// A one-line description naming the file: unreadable, readable by other users, no key,
    /// a line that is not a key.
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--encryption-key-file {shown}: {e}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path)
                .map_err(|e| format!("--encryption-key-file {shown}: {e}"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "--encryption-key-file {shown}: readable by other users (mode {:o}); \
                     make it private with chmod 600",
                    mode & 0o777
                ));
            }
        }
        Self::parse(&text).map_err(|e| format!("--encryption-key-file {shown}: {e}"))
    }

    /// Parses a key file's text.
    ///
    /// # Errors
    /// Which line is wrong and how, or that there is no key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<Key> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = decode_hex_key(line).ok_or_else(|| {
                format!(
                    "line {}: a key is 64 hexadecimal digits (32 bytes), found {} characters",
                    number + 1,
                    line.len()
                )
            })?;
            let key = Key::new(&bytes);
            if keys.iter().any(|k| k.id == key.id) {
                return Err(format!(
                    "line {}: key {} is listed twice",
                    number + 1,
                    key.id
                ));
            }
            if keys.len() == MAX_KEYS {
                return Err(format!("more than {MAX_KEYS} keys"));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("holds no key (one line of 64 hexadecimal digits)".into());
        }
        Ok(Self { keys })
    }

    /// A ring of the given keys, the first sealing.
    ///
    /// # Panics
    /// If `keys` is empty.
    #[must_use]
    pub fn from_keys(keys: &[[u8; KEY_LEN]]) -> Self {
        assert!(!keys.is_empty(), "a key ring holds a key");
        Self {
            keys: keys.iter().map(Key::new).collect(),
        }
    }

    /// The key that seals new data.
    #[must_use]
    pub fn active(&self) -> &Key {
        &self.keys[0]
    }

    /// How many keys the ring holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring is empty: never (a ring holds its sealing key).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key named `id`, if the ring holds it.
    #[must_use]
    pub fn get(&self, id: KeyId) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// A new random key, as a key file line.
    #[must_use]
    pub fn generate_line() -> String {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::getrandom(&mut bytes).expect("the operating system's random source works");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn decode_hex_key(text: &str) -> Option<[u8; KEY_LEN]> {
    if text.len() != KEY_LEN * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let ring = KeyRing::parse(&format!("# rotated\n{K2}\n\n{K1}\n")).unwrap();
        let old = KeyRing::parse(K1).unwrap();
        assert_eq!(ring.get(old.active().id()).unwrap().id(), old.active().id());
        assert_ne!(ring.active().id(), old.active().id());

        let mut data = b"hello".to_vec();
        let (nonce, tag) = old.active().seal(b"aad", &mut data);
        assert_ne!(data, b"hello");
        let key = ring.get(old.active().id()).unwrap();
        assert!(key.open(&nonce, b"aad", &mut data, &tag));
        assert_eq!(data, b"hello");
    }

    #[test]
    fn a_changed_byte_or_context_fails_to_open() {
        let ring = KeyRing::parse(K1).unwrap();
        let key = ring.active();
        let mut data = b"value".to_vec();
        let (nonce, tag) = key.seal(b"block 1", &mut data);
        let mut tampered = data.clone();
        tampered[0] ^= 1;
        assert!(!key.open(&nonce, b"block 1", &mut tampered, &tag));
        let mut moved = data.clone();
        assert!(!key.open(&nonce, b"block 2", &mut moved, &tag));
        assert!(key.open(&nonce, b"block 1", &mut data, &tag));
    }

    #[test]
    fn nonces_are_never_repeated() {
        let a = next_nonce();
        let b = next_nonce();
        assert_ne!(a, b);
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        assert!(KeyRing::parse("").unwrap_err().contains("holds no key"));
        assert!(KeyRing::parse("abc").unwrap_err().contains("line 1"));
        let twice = KeyRing::parse(&format!("{K1}\n{K1}")).unwrap_err();
        assert!(twice.contains("listed twice"), "{twice}");
        let not_hex = KeyRing::parse(&"zz".repeat(32)).unwrap_err();
        assert!(not_hex.contains("64 hexadecimal digits"), "{not_hex}");
        assert!(KeyRing::parse(&KeyRing::generate_line()).is_ok());
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, K1).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = KeyRing::load(&path).unwrap_err();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(KeyRing::load(&path).is_ok());
    }
}
