//! The audit anchor: the head of the audit chain (`seq` and hash) kept outside the audit
//! table, signed, so that records removed from the *end* of the chain (which the chain
//! itself cannot show) are detected.
//!
//! The SQLite backend keeps it in its data directory ([`FILE_NAME`]) and rewrites it
//! whenever the head moves (after the journal write or the commit, before the callers are
//! acknowledged; made durable when idle and at shutdown). The PostgreSQL backend keeps one
//! when told where ([`crate::Store::set_audit_anchor`]), updated twice a second and at
//! shutdown. On start, both compare the anchor with the chain and, if the chain lost or
//! changed records the anchor saw, append a record saying so to the chain before moving
//! the anchor on (see [`crate::AuditDamage`]).
//!
//! # Format
//! A text file of two fixed-size lines ("slots"), written alternately in place, so that a
//! write torn by a crash spoils one slot only; readers take the valid slot with the
//! highest `seq`:
//!
//! ```text
//! tessera-audit-anchor 1 <seq, 20 digits> <hash, 64 hex> <written, µs since epoch, 20 digits> <mac, 64 hex>\n
//! ```
//!
//! `mac` is HMAC-SHA256, keyed with the anchor key, of the line up to (not including) the
//! space before it. The key is 32 random bytes, hex-encoded, in the file next to the
//! anchor named like it with `.key` appended ([`key_path`]), created (mode 0600) with the
//! anchor. It is not in the database: whoever can rewrite the audit table cannot forge an
//! anchor without also reading that file.

use sha2::Digest;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The anchor's file name in a SQLite data directory.
pub const FILE_NAME: &str = "tessera-audit.anchor";

const MAGIC: &str = "tessera-audit-anchor 1";
/// `MAGIC seq hash written mac\n`
const SLOT: usize = MAGIC.len() + 1 + 20 + 1 + 64 + 1 + 20 + 1 + 64 + 1;

/// A head of the audit chain read from an anchor file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorHead {
    pub seq: i64,
    pub hash: [u8; 32],
    /// When it was written (µs since the epoch).
    pub written_micros: i64,
}

/// The key file of the anchor at `anchor`: the same path with `.key` appended.
pub fn key_path(anchor: &Path) -> PathBuf {
    let mut p = anchor.as_os_str().to_owned();
    p.push(".key");
    PathBuf::from(p)
}

/// Reads a key file (64 hex digits).
pub fn read_key(path: &Path) -> io::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)?;
    parse_hex32(text.trim()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{} does not hold a 32-byte hex key", path.display()))
    })
}

/// Creates a key file with a new random key (mode 0600), unless it exists.
fn create_key(path: &Path) -> io::Result<[u8; 32]> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut key)?;
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(format!("{}\n", hex(&key)).as_bytes())?;
    f.sync_all()?;
    sync_parent(path);
    Ok(key)
}

/// HMAC-SHA256 (RFC 2104) with a 32-byte key.
pub fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut inner = sha2::Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner: [u8; 32] = inner.finalize().into();
    let mut outer = sha2::Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn encode_slot(key: &[u8; 32], head: &AnchorHead) -> Vec<u8> {
    let body = format!("{MAGIC} {:020} {} {:020}", head.seq, hex(&head.hash), head.written_micros);
    let mac = hmac_sha256(key, body.as_bytes());
    let line = format!("{body} {}\n", hex(&mac));
    debug_assert_eq!(line.len(), SLOT);
    line.into_bytes()
}

/// Why a slot is not valid.
fn decode_slot(key: &[u8; 32], line: &[u8]) -> Result<AnchorHead, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not text")?;
    let text = text.strip_suffix('\n').ok_or("cut short")?;
    let (body, mac) = text.rsplit_once(' ').ok_or("malformed")?;
    let mac = parse_hex32(mac).ok_or("malformed signature")?;
    if hmac_sha256(key, body.as_bytes()) != mac {
        return Err("its signature does not match (written with another key, or altered)");
    }
    let rest = body.strip_prefix(MAGIC).and_then(|r| r.strip_prefix(' ')).ok_or("not an anchor")?;
    let mut parts = rest.split(' ');
    let seq = parts.next().and_then(|s| s.parse().ok()).ok_or("malformed seq")?;
    let hash = parts.next().and_then(parse_hex32).ok_or("malformed hash")?;
    let written_micros = parts.next().and_then(|s| s.parse().ok()).ok_or("malformed time")?;
    Ok(AnchorHead { seq, hash, written_micros })
}

/// What an anchor file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorState {
    /// No anchor file (or one never written).
    Missing,
    /// The valid slot with the highest `seq`.
    Valid(AnchorHead),
    /// A file without any valid slot: why.
    Invalid(String),
}

/// Reads the anchor at `path`, checking it with `key`.
pub fn read(path: &Path, key: &[u8; 32]) -> io::Result<AnchorState> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AnchorState::Missing),
        Err(e) => return Err(e),
    };
    Ok(read_bytes(&bytes, key))
}

fn read_bytes(bytes: &[u8], key: &[u8; 32]) -> AnchorState {
    let mut best: Option<AnchorHead> = None;
    let mut why = None;
    for slot in bytes.chunks(SLOT).take(2) {
        if slot.iter().all(|&b| b == 0 || b == b' ') {
            continue;
        }
        match decode_slot(key, slot) {
            Ok(h) if best.is_none_or(|b| h.seq > b.seq) => best = Some(h),
            Ok(_) => {}
            Err(e) => why = Some(e),
        }
    }
    match (best, why) {
        (Some(h), _) => AnchorState::Valid(h),
        (None, Some(why)) => AnchorState::Invalid(format!("no valid anchor: {why}")),
        // Created, never written (or blanked).
        (None, None) => AnchorState::Missing,
    }
}

/// Keeps an anchor file up to date (by the store's writer).
pub(crate) struct AnchorWriter {
    path: PathBuf,
    key: [u8; 32],
    file: File,
    /// What the file holds (the valid slot with the highest seq), if anything.
    current: Option<AnchorHead>,
    /// What the file held when opened (before this writer changed it).
    pub(crate) found: AnchorState,
    /// Whether the key file was created by this writer (so no anchor could exist before).
    pub(crate) new_key: bool,
    next_slot: u64,
    /// Written since the last sync.
    dirty: bool,
    /// Refusing to move the anchor backwards (see [`AnchorWriter::update`]).
    pinned: bool,
    last_logged: Option<(std::time::Instant, i64)>,
    last_sync: std::time::Instant,
}

impl AnchorWriter {
    /// Opens the anchor at `path` and its key (creating the key if there is none).
    pub(crate) fn open(path: &Path) -> io::Result<AnchorWriter> {
        let key_file = key_path(path);
        let (key, new_key) = match read_key(&key_file) {
            Ok(k) => (k, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create_key(&key_file) {
                Ok(k) => (k, true),
                // Another process created it meanwhile.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (read_key(&key_file)?, false),
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let found = read(path, &key)?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if file.metadata()?.len() < 2 * SLOT as u64 {
            file.set_len(2 * SLOT as u64)?;
            file.sync_all()?;
            sync_parent(path);
        }
        let current = match &found {
            AnchorState::Valid(h) => Some(*h),
            _ => None,
        };
        // Write next over the older (or invalid) slot.
        let mut next_slot = 0;
        if let Some(cur) = current {
            let mut bytes = vec![0u8; 2 * SLOT];
            let _ = file.read_exact_at(&mut bytes, 0);
            if decode_slot(&key, &bytes[..SLOT]).is_ok_and(|h| h == cur) {
                next_slot = 1;
            }
        }
        Ok(AnchorWriter {
            path: path.to_path_buf(),
            key,
            file,
            current,
            found,
            new_key,
            next_slot,
            dirty: false,
            pinned: false,
            last_logged: None,
            last_sync: std::time::Instant::now(),
        })
    }

    /// What the file holds now.
    pub(crate) fn current(&self) -> Option<AnchorHead> {
        self.current
    }

    /// Moves the anchor to the head `(seq, hash)` (not synced: see [`AnchorWriter::sync`]).
    /// It never moves backwards, nor to another hash at the same `seq`: the chain then
    /// lost records the anchor saw, and the anchor stays where it is, as the evidence,
    /// until the store has recorded the damage in the chain and calls
    /// [`AnchorWriter::force`].
    pub(crate) fn update(&mut self, seq: i64, hash: &[u8; 32]) {
        if let Some(cur) = self.current {
            if cur.seq == seq && &cur.hash == hash {
                return;
            }
            if seq <= cur.seq {
                if !self.pinned {
                    self.pinned = true;
                    tracing::error!(
                        anchored_seq = cur.seq,
                        head_seq = seq,
                        anchor = %self.path.display(),
                        "the audit chain no longer reaches the head the anchor saw: records were removed or rewritten; \
                         the anchor is kept as evidence (run `tessera audit verify`)"
                    );
                }
                return;
            }
        }
        if self.pinned {
            return;
        }
        self.write(seq, hash);
    }

    /// Stops moving the anchor: the record it saw changed (it stays as the evidence, until
    /// [`AnchorWriter::force`]).
    pub(crate) fn pin(&mut self, why: &str) {
        if !self.pinned {
            self.pinned = true;
            tracing::error!(
                anchored_seq = self.current.map(|c| c.seq),
                anchor = %self.path.display(),
                "{why}: the anchor is kept as evidence (run `tessera audit verify`)"
            );
        }
    }

    /// Moves the anchor to `(seq, hash)` whatever it held (after the damage it showed was
    /// recorded in the chain).
    pub(crate) fn force(&mut self, seq: i64, hash: &[u8; 32]) {
        self.pinned = false;
        // Both slots: readers take the highest seq.
        self.write(seq, hash);
        self.write(seq, hash);
        self.sync();
    }

    fn write(&mut self, seq: i64, hash: &[u8; 32]) {
        let head = AnchorHead { seq, hash: *hash, written_micros: crate::now_micros() };
        let slot = encode_slot(&self.key, &head);
        match self.file.write_all_at(&slot, self.next_slot * SLOT as u64) {
            Ok(()) => {
                self.current = Some(head);
                self.next_slot ^= 1;
                self.dirty = true;
            }
            Err(e) => tracing::error!(error = %e, anchor = %self.path.display(), "cannot write the audit anchor"),
        }
    }

    /// Makes the anchor durable, if it changed, and logs the head (at most once a minute
    /// unless `log_now`).
    pub(crate) fn sync_and_log(&mut self, log_now: bool) {
        self.sync();
        let Some(cur) = self.current else { return };
        let due = match self.last_logged {
            None => true,
            Some((at, seq)) => seq != cur.seq && (log_now || at.elapsed() >= std::time::Duration::from_secs(60)),
        };
        if due {
            self.last_logged = Some((std::time::Instant::now(), cur.seq));
            tracing::info!(seq = cur.seq, hash = %hex(&cur.hash), anchor = %self.path.display(), "audit chain head");
        }
    }

    /// [`AnchorWriter::sync_and_log`] if the last sync was a second ago or more (under a
    /// load that leaves the writer no idle moment).
    pub(crate) fn sync_if_due(&mut self) {
        if self.dirty && self.last_sync.elapsed() >= std::time::Duration::from_secs(1) {
            self.sync_and_log(false);
        }
    }

    fn sync(&mut self) {
        self.last_sync = std::time::Instant::now();
        if std::mem::take(&mut self.dirty) {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(error = %e, anchor = %self.path.display(), "cannot sync the audit anchor");
                self.dirty = true;
            }
        }
    }
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2 uses a 4-byte key; HMAC pads keys with zeros, so a 32-byte
        // key that is "Jefe" followed by zeros gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex(&hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn slots_alternate_and_survive_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut w = AnchorWriter::open(&path).unwrap();
        assert!(w.new_key);
        assert_eq!(w.found, AnchorState::Missing);
        w.update(3, &[3; 32]);
        w.update(4, &[4; 32]);
        w.sync_and_log(true);
        let key = read_key(&key_path(&path)).unwrap();
        let AnchorState::Valid(h) = read(&path, &key).unwrap() else { panic!() };
        assert_eq!((h.seq, h.hash), (4, [4; 32]));
        // Backwards: refused.
        w.update(2, &[2; 32]);
        w.update(4, &[9; 32]);
        assert_eq!(w.current().unwrap().seq, 4);
        // A torn (garbled) newest slot: the other one is read.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"garbage", SLOT as u64 + 30).unwrap();
        let AnchorState::Valid(h) = read(&path, &key).unwrap() else { panic!() };
        assert_eq!(h.seq, 3);
        // Another key: invalid.
        let AnchorState::Invalid(why) = read(&path, &[1; 32]).unwrap() else { panic!() };
        assert!(why.contains("signature"), "{why}");
        // Reopened: knows what it holds, writes over the older slot.
        let mut w = AnchorWriter::open(&path).unwrap();
        assert!(!w.new_key);
        assert_eq!(w.current().unwrap().seq, 3);
        w.update(5, &[5; 32]);
        let AnchorState::Valid(h) = read(&path, &key).unwrap() else { panic!() };
        assert_eq!(h.seq, 5);
    }
}

/// The damage an invalid or removed anchor shows (both backends record it the same way):
/// records cut from the chain's end before now would not show. `key_is_new`: the key was
/// made just now (a first start, not a removed anchor); `first`: the next record's `seq`.
pub(crate) fn unanchored_damage(state: &AnchorState, key_is_new: bool, chain_has_records: bool, first: i64) -> Option<crate::AuditDamage> {
    let message = match state {
        AnchorState::Invalid(why) => format!("the audit anchor was not valid ({why}): records removed from the end of the chain before now would not show"),
        AnchorState::Missing if !key_is_new && chain_has_records => {
            "the audit anchor was removed (its key is still there): records removed from the end of the chain before now would not show".to_string()
        }
        _ => return None,
    };
    Some(crate::AuditDamage { kind: crate::DamageKind::AnchorInvalid, first, last: None, placeholder: false, message })
}
