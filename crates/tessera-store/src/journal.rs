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
//! After a fold writing restarts at offset 0; frames left behind from before are ignored on
//! recovery because they were folded already (their `seq` is in `audit_log`).
//!
//! # Recovery and damage
//! The journal holds records already acknowledged to clients, so nothing in it is skipped
//! silently. [`scan`] reads frame after frame; where a frame is cut short, fails its CRC
//! or does not recompute its hash, it notes what can still be read of it (its `seq`, user,
//! patients, … without the checks: [`Scan::damaged`]) and searches the rest of the file
//! for the next valid frame of the chain. Recovery (`sqlite::recover_journal`) then tells
//! apart the end of what was written (zero padding, frames from before the last fold, or
//! the torn write of a group that was never acknowledged: beyond the head the anchor saw)
//! from damage: frames missing or unreadable between readable ones, a cut-short file (it
//! is preallocated and never shortened), a journal gone after a crash, records the anchor
//! saw that are nowhere. Damage is logged as an error and recorded in the audit chain
//! itself ([`crate::AuditDamage`]), which `tessera audit verify` reports.
//!
//! Whether the server stopped cleanly (everything moved into `audit_log`) is kept in the
//! database (`tessera_meta`, [`STATE_KEY`]): `open` while a server runs, `clean <seq>`
//! once it has stopped cleanly.

use crate::anchor::AnchorWriter;
use crate::{audit_hash, ChainHead, PendingAudit, StoreMetrics};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// The meta key saying whether the journal was left empty (`clean <seq>`) or in use
/// (`open`).
pub(crate) const STATE_KEY: &str = "audit.journal-state";

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
    /// The anchor in the same directory (see [`crate::anchor`]), kept at the head of the
    /// chain by the writer; `None` if it cannot be opened (logged).
    anchor: Option<AnchorWriter>,
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
        let anchor = match AnchorWriter::open(&dir.join(crate::anchor::FILE_NAME)) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.display(), "cannot open the audit anchor: the chain's head is not anchored");
                None
            }
        };
        Ok((Journal { path, file, end: 0, anchor }, frames))
    }

    /// The head of the chain moved (records journaled or committed): update the anchor
    /// (before the callers are acknowledged) and the metric.
    pub(crate) fn anchor(&mut self, head: ChainHead, metrics: &StoreMetrics) {
        metrics.audit_head_seq.store(head.seq, Ordering::Relaxed);
        if let Some(a) = &mut self.anchor {
            a.update(head.seq, &head.hash);
            a.sync_if_due();
        }
    }

    /// Makes the anchor durable and logs the head (when idle, and with `now` at shutdown).
    pub(crate) fn sync_anchor(&mut self, now: bool) {
        if let Some(a) = &mut self.anchor {
            a.sync_and_log(now);
        }
    }

    /// For tests: is this journal held (see [`hold`])?
    pub(crate) fn held(&self) -> bool {
        let dir = self.path.parent().unwrap_or(&self.path);
        held_dirs().lock().unwrap_or_else(|p| p.into_inner()).iter().any(|d| d == dir)
    }

    /// For tests: ends the hold (the writer stopped as if killed).
    pub(crate) fn release_hold(&self) {
        let dir = self.path.parent().unwrap_or(&self.path);
        held_dirs().lock().unwrap_or_else(|p| p.into_inner()).retain(|d| d != dir);
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

fn held_dirs() -> &'static std::sync::Mutex<Vec<PathBuf>> {
    static HELD: std::sync::OnceLock<std::sync::Mutex<Vec<PathBuf>>> = std::sync::OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// For tests: the writer of the store in `dir` keeps journaled records in the journal
/// (no fold when idle) and, when the store is dropped, stops as if the process were
/// killed (no fold, no clean stop recorded).
pub(crate) fn hold(dir: &Path) {
    held_dirs().lock().unwrap_or_else(|p| p.into_inner()).push(dir.to_path_buf());
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
    let c = decode_body(body)?;
    if audit_hash(&c.prev_hash, c.seq, c.audit.recorded_micros, &c.audit.event) != c.hash {
        return None;
    }
    Some((c, 8 + len))
}

/// What can be read of a damaged frame at the start of `bytes` (its CRC and hash
/// unchecked; a frame cut short is read as far as it goes), if its structure holds.
fn decode_damaged(bytes: &[u8]) -> Option<Chained> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    if len < MIN_BODY || len as u64 > CAPACITY {
        return None;
    }
    let body = &bytes[8.min(bytes.len())..bytes.len().min(8 + len)];
    if body.len() == len {
        return decode_body(body);
    }
    // Cut short: whatever the header fields give.
    let mut r = Reader(body);
    let seq = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let recorded_micros = i64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let prev_hash: [u8; 32] = r.take(32)?.try_into().ok()?;
    let hash: [u8; 32] = r.take(32)?.try_into().ok()?;
    let break_glass = r.take(1)?[0] != 0;
    let user = r.optional_string().flatten();
    let audit = PendingAudit {
        recorded_micros,
        user,
        patients: Vec::new(),
        action: String::new(),
        break_glass,
        event: Vec::new(),
        stored: None,
    };
    Some(Chained { seq, prev_hash, hash, audit })
}

/// The smallest frame body: the fixed fields and four lengths.
const MIN_BODY: usize = 8 + 8 + 32 + 32 + 1 + 16;

/// Decodes a frame body (no checks beyond its structure).
fn decode_body(body: &[u8]) -> Option<Chained> {
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
    if !r.0.is_empty() {
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
    Some(Chained {
        seq,
        prev_hash,
        hash,
        audit,
    })
}

/// What [`scan`] found in a journal.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Valid frames with `seq > after_seq`, in the order of the file.
    pub frames: Vec<Chained>,
    /// What could be read of damaged frames with `seq > after_seq` (unchecked: the `seq`
    /// and the columns of a frame that failed its CRC or hash, or was cut short).
    pub damaged: Vec<Chained>,
}

/// The largest `seq` distance from `after_seq` at which [`scan`] looks for frames past a
/// damaged one (more records than the journal can hold).
const RESYNC_WINDOW: i64 = (CAPACITY / 64) as i64;

/// Reads every frame of `bytes` (a journal) with `seq > after_seq`, searching past any
/// damaged or missing stretch for the next valid frame (see the module documentation).
pub(crate) fn scan(bytes: &[u8], after_seq: i64) -> Scan {
    let mut out = Scan::default();
    let mut at = 0;
    // The highest seq read so far: past damage, only frames after it are looked for.
    let mut floor = after_seq;
    while at < bytes.len() {
        if let Some((frame, size)) = decode_frame(&bytes[at..]) {
            if frame.seq > after_seq {
                floor = floor.max(frame.seq);
                out.frames.push(frame);
            }
            at += size;
            continue;
        }
        // Not a valid frame: zero padding, frames from before the last fold, a torn
        // write, or damage. Look for the next valid frame; note what can be read of the
        // damaged frames up to it (following their own lengths while they hold).
        let next = next_frame(bytes, at + 1, floor);
        let end = next.unwrap_or(bytes.len());
        let mut d_at = at;
        let mut expected = floor;
        while d_at < end {
            let Some(d) = decode_damaged(&bytes[d_at..end]) else { break };
            if d.seq <= expected || d.seq > floor + RESYNC_WINDOW {
                break;
            }
            expected = d.seq;
            let len = u32::from_le_bytes(bytes[d_at..d_at + 4].try_into().unwrap_or_default()) as usize;
            out.damaged.push(d);
            d_at += 8 + len;
        }
        match next {
            Some(next) => at = next,
            None => break,
        }
    }
    out
}

/// The offset of the next valid frame at or after `from` whose `seq` is above `floor`
/// (a cheap test of its length and `seq` first; the CRC and hash then decide).
fn next_frame(bytes: &[u8], from: usize, floor: i64) -> Option<usize> {
    let mut at = from;
    while at + 8 + MIN_BODY <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().ok()?) as usize;
        if len >= MIN_BODY && at + 8 + len <= bytes.len() {
            let seq = i64::from_be_bytes(bytes[at + 8..at + 16].try_into().ok()?);
            if seq > floor && seq <= floor + RESYNC_WINDOW && decode_frame(&bytes[at..]).is_some() {
                return Some(at);
            }
        }
        at += 1;
    }
    None
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

/// The valid frames of the journal in `dir`, read without opening it for writing (a
/// command run beside the server that owns the journal). No journal: no frames.
pub(crate) fn read_frames(dir: &Path) -> io::Result<Vec<Chained>> {
    let bytes = match std::fs::read(dir.join(FILE_NAME)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((frame, size)) = decode_frame(&bytes[at..]) {
        frames.push(frame);
        at += size;
    }
    Ok(frames)
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
        // A flipped bit in the first frame: nothing is read past it (here; recovery
        // `scan`s past it).
        f.write_all_at(&[bytes[40] ^ 1], 40).unwrap();
        let (_, found) = Journal::open(dir.path()).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn scan_reads_past_damage_and_notes_what_it_can() {
        let mut head = ChainHead::GENESIS;
        let records: Vec<Chained> = (1..=6).map(|n| chain(&mut head, n)).collect();
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for r in &records {
            starts.push(bytes.len());
            encode_frame(r, &mut bytes);
        }
        bytes.extend_from_slice(&[0; 256]);
        let seqs = |v: &[Chained]| v.iter().map(|c| c.seq).collect::<Vec<_>>();

        let s = scan(&bytes, 0);
        assert_eq!((seqs(&s.frames), seqs(&s.damaged)), (vec![1, 2, 3, 4, 5, 6], vec![]));
        assert_eq!(seqs(&scan(&bytes, 4).frames), vec![5, 6], "frames already in the database are skipped");

        // A flipped byte in record 3's event: 3 is noted, with what it says; 4.. are read.
        let mut b = bytes.clone();
        b[starts[3] - 2] ^= 1;
        let s = scan(&b, 0);
        assert_eq!((seqs(&s.frames), seqs(&s.damaged)), (vec![1, 2, 4, 5, 6], vec![3]));
        assert_eq!(s.damaged[0].audit.user, records[2].audit.user);
        assert_eq!(s.damaged[0].audit.patients, vec!["p3"]);

        // Records 2 and 3 both damaged: both noted.
        b[starts[2] - 2] ^= 1;
        let s = scan(&b, 0);
        assert_eq!((seqs(&s.frames), seqs(&s.damaged)), (vec![1, 4, 5, 6], vec![2, 3]));

        // A garbled length: the frame is skipped, the next one found.
        let mut b = bytes.clone();
        b[starts[1]..starts[1] + 4].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(seqs(&scan(&b, 0).frames), vec![1, 3, 4, 5, 6]);

        // Cut inside record 5: 5 is noted as far as it goes.
        let s = scan(&bytes[..starts[4] + 60], 0);
        assert_eq!((seqs(&s.frames), seqs(&s.damaged)), (vec![1, 2, 3, 4], vec![]), "too short to say which record");
        let s = scan(&bytes[..starts[4] + 100], 0);
        assert_eq!((seqs(&s.frames), seqs(&s.damaged)), (vec![1, 2, 3, 4], vec![5]));

        // Frames left from before the last fold (lower seqs) after the current ones.
        let mut b = Vec::new();
        encode_frame(&records[4], &mut b);
        encode_frame(&records[5], &mut b);
        b.extend_from_slice(&bytes[starts[2]..starts[4]]);
        b.extend_from_slice(&[0; 64]);
        let s = scan(&b, 4);
        assert_eq!((seqs(&s.frames), seqs(&s.damaged)), (vec![5, 6], vec![]));
    }
}
