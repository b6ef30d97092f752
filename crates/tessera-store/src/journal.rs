//! The audit journal: where the SQLite backend makes the audit records of reads durable.
//!
//! Committing every read's audit record to the database would cost a full SQLite commit
//! per group of reads and, worse, make each commit invalidate the page cache of every
//! reader connection. Instead the writer thread appends read-audit records, already
//! chained (`seq`, `prev_hash`, `hash`), to this file — one synchronous (`O_DSYNC`) write
//! per group — and
//! moves them into `audit_log` in bulk ("folds" them): in the same database transaction
//! as the next commit of writes, when the journal fills, when the writer is idle, before
//! the log is queried, and at shutdown.
//!
//! Invariant: `audit_log` holds a prefix of the audit chain and the journal the rest.
//! An acknowledged record is in one or the other, durably.
//!
//! # Format
//! `tessera-audit.journal` next to the database, zero-filled to [`CAPACITY`] bytes when
//! created (so that appending does not change the file's size and a synchronous write
//! carries data only). Frames follow each other from offset 0:
//!
//! ```text
//! len u32 LE | crc32 u32 LE (of body) | body (len bytes)
//! body = seq i64 BE | recorded i64 BE | prev_hash [32] | hash [32] | break_glass u8
//!        | user | action | patients | event      (each: u32 LE length, then bytes;
//!                                                  u32::MAX for an absent user)
//! ```
//!
//! Reading stops at the first frame that is cut short, fails its CRC or does not
//! recompute its hash: a torn tail (never acknowledged) or the zero padding. After a fold
//! writing restarts at offset 0; frames left behind from before are ignored on recovery
//! because they were folded already (their `seq` is in `audit_log`).

use crate::{audit_hash, PendingAudit};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The journal's file name, in the data directory.
pub(crate) const FILE_NAME: &str = "tessera-audit.journal";

/// Bytes preallocated for the journal; a fold empties it.
pub(crate) const CAPACITY: u64 = 2 << 20;

/// An audit record with its place in the chain.
#[derive(Debug, Clone)]
pub(crate) struct Chained {
    pub seq: i64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub audit: PendingAudit,
}

pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Where the next frame goes.
    end: u64,
}

impl Journal {
    /// Opens (creating and preallocating if needed) the journal in `dir`, and returns it
    /// with the valid frames it holds, in order.
    pub(crate) fn open(dir: &Path) -> io::Result<(Journal, Vec<Chained>)> {
        let path = dir.join(FILE_NAME);
        // O_DSYNC: each write returns once its data is durable (one device request,
        // cheaper than write + fdatasync).
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_DSYNC)
            .open(&path)?;
        let len = file.metadata()?.len();
        let mut frames = Vec::new();
        if len > 0 {
            let mut bytes = vec![0; len as usize];
            file.read_exact_at(&mut bytes, 0)?;
            let mut at = 0;
            while let Some((frame, size)) = decode_frame(&bytes[at..]) {
                frames.push(frame);
                at += size;
            }
        }
        if len < CAPACITY {
            // Zero-fill (not a sparse extension): later appends then change no metadata.
            let zeros = vec![0u8; (CAPACITY - len) as usize];
            file.write_all_at(&zeros, len)?;
            file.sync_all()?;
            sync_dir(dir);
        }
        Ok((Journal { path, file, end: 0 }, frames))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Would `bytes` more fit?
    pub(crate) fn fits(&self, bytes: usize) -> bool {
        self.end + bytes as u64 <= CAPACITY
    }

    /// Appends the frames and makes them durable. On failure nothing counts as written
    /// (the next append overwrites whatever part reached the file).
    pub(crate) fn append(&mut self, frames: &[u8]) -> io::Result<()> {
        self.file.write_all_at(frames, self.end)?; // O_DSYNC: durable on return
        self.end += frames.len() as u64;
        Ok(())
    }

    /// Starts over at offset 0, once everything in the journal is in `audit_log`.
    pub(crate) fn reset(&mut self) {
        self.end = 0;
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The size of `c` as a frame, header included.
pub(crate) fn frame_len(a: &PendingAudit) -> usize {
    8 + 8
        + 8
        + 32
        + 32
        + 1
        + 16
        + a.user.as_ref().map_or(0, String::len)
        + a.action.len()
        + patients_len(a)
        + a.event.len()
}

fn patients_len(a: &PendingAudit) -> usize {
    a.patients_column().map_or(0, |p| p.len())
}

/// Appends `c` as a frame to `out`.
pub(crate) fn encode_frame(c: &Chained, out: &mut Vec<u8>) {
    let a = &c.audit;
    let start = out.len();
    out.extend_from_slice(&[0; 8]); // len and crc, filled in below
    out.extend_from_slice(&c.seq.to_be_bytes());
    out.extend_from_slice(&a.recorded_micros.to_be_bytes());
    out.extend_from_slice(&c.prev_hash);
    out.extend_from_slice(&c.hash);
    out.push(a.break_glass as u8);
    match &a.user {
        Some(u) => put(out, u.as_bytes()),
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    put(out, a.action.as_bytes());
    put(out, a.patients_column().unwrap_or_default().as_bytes());
    put(out, &a.event);
    let body_len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes the frame at the start of `bytes`: the record and the frame's size, or `None`
/// if there is no valid frame there.
fn decode_frame(bytes: &[u8]) -> Option<(Chained, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len == 0 {
        return None;
    }
    let body = bytes.get(8..8usize.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut r = Reader(body);
    let seq = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let recorded_micros = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let prev_hash: [u8; 32] = r.take(32)?.try_into().ok()?;
    let hash: [u8; 32] = r.take(32)?.try_into().ok()?;
    let break_glass = r.take(1)?[0] != 0;
    let user = r.optional_string()?;
    let action = r.string()?;
    let patients = crate::parse_patients(Some(&r.string()?)).ok()?;
    let event = r.bytes()?.to_vec();
    if !r.0.is_empty() || audit_hash(&prev_hash, seq, recorded_micros, &event) != hash {
        return None;
    }
    let audit = PendingAudit {
        recorded_micros,
        user,
        patients,
        action,
        break_glass,
        event,
        stored: None,
    };
    Some((
        Chained {
            seq,
            prev_hash,
            hash,
            audit,
        },
        8 + len,
    ))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn length(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.length()?;
        self.take(n as usize)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn optional_string(&mut self) -> Option<Option<String>> {
        let n = self.length()?;
        if n == u32::MAX {
            return Some(None);
        }
        Some(Some(
            String::from_utf8(self.take(n as usize)?.to_vec()).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChainHead;

    fn record(n: i64) -> PendingAudit {
        PendingAudit {
            recorded_micros: 1_700_000_000_000_000 + n,
            user: (n % 2 == 0).then(|| format!("Practitioner/{n}")),
            patients: vec![format!("p{n}")],
            action: "read".into(),
            break_glass: n % 3 == 0,
            event: format!("{{\"n\":{n}}}").into_bytes(),
            stored: None,
        }
    }

    fn chain(head: &mut ChainHead, n: i64) -> Chained {
        let audit = record(n);
        let (seq, prev_hash, hash) = head.chain(&audit);
        Chained {
            seq,
            prev_hash,
            hash,
            audit,
        }
    }

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = ChainHead::GENESIS;
        let records: Vec<Chained> = (1..=5).map(|n| chain(&mut head, n)).collect();
        let mut bytes = Vec::new();
        for r in &records {
            assert_eq!(frame_len(&r.audit), {
                let before = bytes.len();
                encode_frame(r, &mut bytes);
                bytes.len() - before
            });
        }
        {
            let (mut j, found) = Journal::open(dir.path()).unwrap();
            assert!(found.is_empty());
            j.append(&bytes).unwrap();
        }
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found.len(), 5);
        assert_eq!(found[4].seq, 5);
        assert_eq!(found[2].audit, records[2].audit);
        // Cut the last frame short: the four before it remain.
        let path = dir.path().join("tessera-audit.journal");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0; 10], (bytes.len() - 10) as u64).unwrap();
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert_eq!(found.len(), 4);
        // A flipped bit in the first frame: nothing is read past it.
        f.write_all_at(&[bytes[40] ^ 1], 40).unwrap();
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert!(found.is_empty());
    }
}
