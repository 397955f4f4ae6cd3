//! The embedded store's write-ahead log: one file, `switchboard.wal` in
//! the data folder, that makes a write batch durable with one append and
//! one `fdatasync` instead of a durable redb commit (see the crate
//! documentation for why, and `embedded.rs` for when records are written
//! and when the log is checkpointed).
//!
//! **Record format.** Records lie end to end from offset 0. Each is a
//! [`HEADER_BYTES`]-byte header, all little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0–3 | magic, [`MAGIC`] |
//! | 4–11 | generation: the log's generation when it was written (redb's `meta["wal_generation"]`; 64 random bits drawn at each checkpoint, so a record of an older generation, of another database's log, or forged in message text that lies behind the current records, is never taken for a current one) |
//! | 12–19 | sequence: 0 for a generation's first record, then +1 each |
//! | 20–23 | payload length in bytes |
//! | 24–27 | CRC-32 (IEEE) of bytes 4–23 and the payload |
//!
//! then the payload: the batch's [`Effect`]s, each a tag byte and its
//! fields (integers `u64` little-endian, texts a `u32` length and UTF-8
//! bytes, an absent `cid` a 0 byte and a present one a 1 byte then the
//! text).
//!
//! **Invariants.** The records of the current generation are exactly the
//! batches committed (without fsync) since the last durable commit, in
//! commit order, from offset 0 with consecutive sequences; whatever
//! follows the last of them is zeros, a torn record, or records of older
//! generations. [`scan`] reads exactly those records, stopping at the
//! first header that is not the next one of the current generation or
//! whose checksum fails. Each effect is an absolute value (a row put, a
//! count set), so replaying a record whose batch redb already holds
//! changes nothing.
//!
//! **Why zero-filled and not `fallocate`.** The file is grown by writing
//! zeros ([`limits::WAL_GROW_BYTES`] at a time, then `fsync` of the file
//! and its folder) and never shrunk, so an append writes only into blocks
//! that are allocated, written and inside the file's size: `fdatasync`
//! then has data to flush and no metadata. `fallocate` would leave the
//! blocks *unwritten* extents, and the first write into each turns it
//! into a written one, a metadata change that `fdatasync` must journal
//! (ext4, xfs); it would also need `unsafe` here.

use crate::limits;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_shards::model::{MsgId, UserId};

/// The log file's name inside the data folder.
pub(crate) const WAL_FILE_NAME: &str = "switchboard.wal";
/// The first four bytes of every record: `SBW1` read as a little-endian
/// `u32`.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"SBW1");
/// Size of a record's header.
pub(crate) const HEADER_BYTES: usize = 28;

/// One change a write batch made, as the value it left (never a delta):
/// applying it twice leaves what applying it once does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// `meta["next_msg_id"]` set to this.
    NextMsgId(MsgId),
    /// A `messages` row put.
    Message {
        /// Its id (the key).
        id: MsgId,
        /// Sender.
        from: UserId,
        /// Recipient.
        to: UserId,
        /// Timestamp, as sent.
        ts: u64,
        /// Text.
        text: Arc<str>,
        /// Client message id, if any.
        cid: Option<Arc<str>>,
    },
    /// A `conversations` entry `(lo, hi, id) → from` put.
    Conversation {
        /// Smaller user id of the conversation.
        lo: UserId,
        /// Larger user id.
        hi: UserId,
        /// The message.
        id: MsgId,
        /// Its sender.
        from: UserId,
    },
    /// A `cids` entry `(from, cid) → id` put.
    Cid {
        /// Sender.
        from: UserId,
        /// Client message id.
        cid: Arc<str>,
        /// The message stored for it.
        id: MsgId,
    },
    /// `unread[(user, from)]` set to `count`; 0 removes the entry.
    Unread {
        /// Who has unread messages.
        user: UserId,
        /// From whom.
        from: UserId,
        /// How many.
        count: u64,
    },
    /// `read_marks[(user, with)]` set to `upto`.
    ReadMark {
        /// Who read.
        user: UserId,
        /// The conversation's other user.
        with: UserId,
        /// Last message read.
        upto: MsgId,
    },
    /// `ui[user]` set to `state`.
    Ui {
        /// Whose.
        user: UserId,
        /// The UI state text.
        state: Arc<str>,
    },
}

/// Payload tags, one per [`Effect`] variant.
const TAG_NEXT_MSG_ID: u8 = 1;
const TAG_MESSAGE: u8 = 2;
const TAG_CONVERSATION: u8 = 3;
const TAG_CID: u8 = 4;
const TAG_UNREAD: u8 = 5;
const TAG_READ_MARK: u8 = 6;
const TAG_UI: u8 = 7;

/// Appends `effects`' encoding to `out`.
fn encode_effects(effects: &[Effect], out: &mut Vec<u8>) {
    let u64_ = |out: &mut Vec<u8>, n: u64| out.extend_from_slice(&n.to_le_bytes());
    let text = |out: &mut Vec<u8>, s: &str| {
        // Texts are bounded far below 4 GiB (limits::MESSAGE_TEXT_BYTES_MAX
        // and friends), checked before a write runs.
        let len = u32::try_from(s.len()).expect("text over 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    for effect in effects {
        match effect {
            Effect::NextMsgId(id) => {
                out.push(TAG_NEXT_MSG_ID);
                u64_(out, *id);
            }
            Effect::Message {
                id,
                from,
                to,
                ts,
                text: t,
                cid,
            } => {
                out.push(TAG_MESSAGE);
                for n in [*id, *from, *to, *ts] {
                    u64_(out, n);
                }
                text(out, t);
                match cid {
                    None => out.push(0),
                    Some(cid) => {
                        out.push(1);
                        text(out, cid);
                    }
                }
            }
            Effect::Conversation { lo, hi, id, from } => {
                out.push(TAG_CONVERSATION);
                for n in [*lo, *hi, *id, *from] {
                    u64_(out, n);
                }
            }
            Effect::Cid { from, cid, id } => {
                out.push(TAG_CID);
                u64_(out, *from);
                text(out, cid);
                u64_(out, *id);
            }
            Effect::Unread { user, from, count } => {
                out.push(TAG_UNREAD);
                for n in [*user, *from, *count] {
                    u64_(out, n);
                }
            }
            Effect::ReadMark { user, with, upto } => {
                out.push(TAG_READ_MARK);
                for n in [*user, *with, *upto] {
                    u64_(out, n);
                }
            }
            Effect::Ui { user, state } => {
                out.push(TAG_UI);
                u64_(out, *user);
                text(out, state);
            }
        }
    }
}

/// Reads a payload back into effects. A payload that does not parse
/// passed its checksum, so it was written so: a bug or another version,
/// never a torn write; the text says where.
fn decode_effects(mut bytes: &[u8]) -> Result<Vec<Effect>, String> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if bytes.len() < n {
            return Err(format!("payload ends {} bytes early", n - bytes.len()));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn u64_(bytes: &mut &[u8]) -> Result<u64, String> {
        Ok(u64::from_le_bytes(take(bytes, 8)?.try_into().expect("8")))
    }
    fn text(bytes: &mut &[u8]) -> Result<Arc<str>, String> {
        let len = u32::from_le_bytes(take(bytes, 4)?.try_into().expect("4"));
        let raw = take(bytes, len as usize)?;
        std::str::from_utf8(raw)
            .map(Arc::from)
            .map_err(|e| format!("text not UTF-8: {e}"))
    }
    let mut effects = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let b = &mut bytes;
        let effect = match tag {
            TAG_NEXT_MSG_ID => Effect::NextMsgId(u64_(b)?),
            TAG_MESSAGE => Effect::Message {
                id: u64_(b)?,
                from: u64_(b)?,
                to: u64_(b)?,
                ts: u64_(b)?,
                text: text(b)?,
                cid: match take(b, 1)?[0] {
                    0 => None,
                    1 => Some(text(b)?),
                    other => return Err(format!("cid flag {other}")),
                },
            },
            TAG_CONVERSATION => Effect::Conversation {
                lo: u64_(b)?,
                hi: u64_(b)?,
                id: u64_(b)?,
                from: u64_(b)?,
            },
            TAG_CID => Effect::Cid {
                from: u64_(b)?,
                cid: text(b)?,
                id: u64_(b)?,
            },
            TAG_UNREAD => Effect::Unread {
                user: u64_(b)?,
                from: u64_(b)?,
                count: u64_(b)?,
            },
            TAG_READ_MARK => Effect::ReadMark {
                user: u64_(b)?,
                with: u64_(b)?,
                upto: u64_(b)?,
            },
            TAG_UI => Effect::Ui {
                user: u64_(b)?,
                state: text(b)?,
            },
            other => return Err(format!("unknown effect tag {other}")),
        };
        effects.push(effect);
    }
    Ok(effects)
}

/// The checksum of a record: bytes 4–23 of its header and its payload.
fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..24]);
    crc.update(payload);
    crc.finalize()
}

/// Appends one whole record (header and payload) to `out`.
pub(crate) fn encode_record(generation: u64, sequence: u64, effects: &[Effect], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    encode_effects(effects, out);
    let payload_len = out.len() - start - HEADER_BYTES;
    let len = u32::try_from(payload_len).expect("record over 4 GiB");
    let (header, payload) = out[start..].split_at_mut(HEADER_BYTES);
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..12].copy_from_slice(&generation.to_le_bytes());
    header[12..20].copy_from_slice(&sequence.to_le_bytes());
    header[20..24].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(header, payload);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// Why [`scan`] stopped where it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// The file ended exactly after the last record.
    FileEnd,
    /// Zeros (the preallocated rest of the file).
    Zeros,
    /// A header that is not the next record of this generation: another
    /// magic, generation or sequence (an older generation's record, or
    /// garbage).
    NotNext,
    /// The next record's length runs past the end of the file, or its
    /// checksum fails: a torn append, never acknowledged.
    Torn,
}

/// What [`scan`] found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The records of the generation, in order: each one batch's effects.
    pub(crate) records: Vec<Vec<Effect>>,
    /// Bytes they take from offset 0.
    pub(crate) bytes: u64,
    /// What came after them.
    pub(crate) end: ScanEnd,
}

/// Reads the records of `generation` from the start of `file` (see the
/// module documentation). `Err` only for a record whose checksum holds
/// and whose payload does not parse.
pub(crate) fn scan(file: &[u8], generation: u64) -> Result<Scan, String> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let end = loop {
        let rest = &file[offset..];
        if rest.is_empty() {
            break ScanEnd::FileEnd;
        }
        if rest.len() < HEADER_BYTES {
            break if rest.iter().all(|&b| b == 0) {
                ScanEnd::Zeros
            } else {
                ScanEnd::Torn
            };
        }
        let header = &rest[..HEADER_BYTES];
        let field = |range: std::ops::Range<usize>| {
            let mut le = [0u8; 8];
            le[..range.len()].copy_from_slice(&header[range]);
            u64::from_le_bytes(le)
        };
        if header.iter().all(|&b| b == 0) {
            break ScanEnd::Zeros;
        }
        if field(0..4) != u64::from(MAGIC)
            || field(4..12) != generation
            || field(12..20) != records.len() as u64
        {
            break ScanEnd::NotNext;
        }
        let len = field(20..24) as usize;
        let Some(payload) = rest.get(HEADER_BYTES..HEADER_BYTES + len) else {
            break ScanEnd::Torn;
        };
        if field(24..28) != u64::from(checksum(header, payload)) {
            break ScanEnd::Torn;
        }
        let effects = decode_effects(payload)
            .map_err(|e| format!("WAL record {} at offset {offset}: {e}", records.len()))?;
        records.push(effects);
        offset += HEADER_BYTES + len;
    };
    Ok(Scan {
        records,
        bytes: offset as u64,
        end,
    })
}

/// Whether a write batch appends its record or checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Append the record, `fdatasync`, commit redb without fsync.
    Append,
    /// Commit redb durably (fsync) with the next generation instead, and
    /// start the log again from offset 0.
    Checkpoint(Why),
}

/// Why a checkpoint is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// The log's first record is older than [`limits::WAL_CHECKPOINT_AGE_MS`].
    Age,
    /// The record would end past [`limits::WAL_BYTES_MAX`].
    Size,
    /// Appending the record failed (the batch is made durable by redb).
    AppendFailed,
    /// A db thread found no job for [`limits::DB_IDLE_WAIT_MS`].
    Idle,
    /// A db thread is stopping (the store shuts down).
    Shutdown,
}

/// The open log: where the next record goes. Only a db thread holding
/// redb's write lock touches it (behind a mutex that is therefore never
/// contended), so records are in commit order.
pub(crate) struct Wal {
    /// The file, opened read-write.
    file: File,
    /// Its path, for error texts.
    path: PathBuf,
    /// The folder it is in, synced when the file is created or grown.
    dir: PathBuf,
    /// The generation records are written with now (redb's
    /// `meta["wal_generation"]` as last committed durably).
    generation: u64,
    /// The next record's sequence number (= records of this generation).
    sequence: u64,
    /// Where the next record goes (= bytes of this generation's records).
    offset: u64,
    /// The file's size; everything past `offset` up to it is zeros or
    /// stale records.
    len: u64,
    /// When this generation's first record was appended (`None`: none yet).
    oldest: Option<Instant>,
    /// An append failed: the record may be partly on disk, so nothing is
    /// appended before a checkpoint succeeds ([`Wal::plan`] says
    /// checkpoint until [`Wal::reset`]).
    must_checkpoint: bool,
    /// The record being written (reused).
    buf: Vec<u8>,
}

impl Wal {
    /// Opens (creating, mode 0600) the log at `path`, returns it with the
    /// file's contents, and grows it to at least [`limits::WAL_GROW_BYTES`]
    /// with zeros. The generation is unset (0) until [`Wal::reset`].
    pub(crate) fn open(path: &Path) -> io::Result<(Wal, Vec<u8>)> {
        let mut file = crate::files::create_file_private(path)?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut wal = Wal {
            file,
            path: path.to_path_buf(),
            dir,
            generation: 0,
            sequence: 0,
            offset: 0,
            len: contents.len() as u64,
            oldest: None,
            must_checkpoint: false,
            buf: Vec::new(),
        };
        wal.grow_to(limits::WAL_GROW_BYTES as u64)?;
        Ok((wal, contents))
    }

    /// The generation records are written with now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of records in the current generation (0: nothing to
    /// checkpoint).
    pub(crate) fn bytes(&self) -> u64 {
        self.offset
    }

    /// Starts `generation` from offset 0: called once redb holds,
    /// durably, everything logged so far and `generation` in its meta.
    pub(crate) fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.sequence = 0;
        self.offset = 0;
        self.oldest = None;
        self.must_checkpoint = false;
    }

    /// How long ago this generation's first record was appended (`None`:
    /// the log is empty).
    pub(crate) fn age(&self, now: Instant) -> Option<Duration> {
        self.oldest.map(|t| now.saturating_duration_since(t))
    }

    /// Encodes `effects` as the next record, into the reused buffer, and
    /// says whether it is to be appended or the batch is to checkpoint
    /// (`checkpoint_by_age`: whether an old log forces one; off only under
    /// fault injection).
    pub(crate) fn plan(
        &mut self,
        effects: &[Effect],
        now: Instant,
        checkpoint_by_age: bool,
    ) -> Plan {
        self.buf.clear();
        encode_record(self.generation, self.sequence, effects, &mut self.buf);
        let age = Duration::from_millis(limits::WAL_CHECKPOINT_AGE_MS);
        if self.must_checkpoint {
            Plan::Checkpoint(Why::AppendFailed)
        } else if self.offset + self.buf.len() as u64 > limits::WAL_BYTES_MAX as u64 {
            Plan::Checkpoint(Why::Size)
        } else if checkpoint_by_age && self.oldest.is_some_and(|t| now.duration_since(t) >= age) {
            Plan::Checkpoint(Why::Age)
        } else {
            Plan::Append
        }
    }

    /// Writes the record [`Wal::plan`] encoded at the log's end and
    /// `fdatasync`s it; `stall` runs between the write and the sync (the
    /// fault hook). On `Err` the log must not be appended to again before
    /// a checkpoint ([`Wal::reset`]): the record may be partly on disk.
    pub(crate) fn append(&mut self, now: Instant, stall: impl FnOnce()) -> io::Result<()> {
        let end = self.offset + self.buf.len() as u64;
        // Set until the write and its sync succeed: a failed one (even a
        // failed fdatasync, whose dirty pages the kernel may have dropped)
        // is never followed by another append, only by a checkpoint.
        self.must_checkpoint = true;
        if end > self.len {
            let step = limits::WAL_GROW_BYTES as u64;
            self.grow_to(end.div_ceil(step) * step)?;
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        stall();
        self.file.sync_data()?;
        self.must_checkpoint = false;
        self.offset = end;
        self.sequence += 1;
        self.oldest.get_or_insert(now);
        Ok(())
    }

    /// Takes back the last record appended, whose batch then failed to
    /// commit: its header is zeroed and synced, so no recovery replays it,
    /// and the next record goes where it was.
    pub(crate) fn unappend_last(&mut self, at: u64) -> io::Result<()> {
        self.file.write_all_at(&[0; HEADER_BYTES], at)?;
        self.file.sync_data()?;
        self.offset = at;
        self.sequence -= 1;
        if self.sequence == 0 {
            self.oldest = None;
        }
        Ok(())
    }

    /// Where the last appended record began, given its encoded length
    /// (for [`Wal::unappend_last`]).
    pub(crate) fn last_record_at(&self) -> u64 {
        self.offset - self.buf.len() as u64
    }

    /// Grows the file to `len` bytes by writing zeros, then syncs it and
    /// its folder (a new size and a new file are metadata).
    fn grow_to(&mut self, len: u64) -> io::Result<()> {
        if self.len >= len {
            return Ok(());
        }
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.len;
        while at < len {
            let n = (len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        log::debug!("storage: WAL {} grown to {len} bytes", self.path.display());
        self.len = len;
        Ok(())
    }

    /// The log's path (for log lines).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u64) -> Vec<Effect> {
        vec![
            Effect::NextMsgId(n + 1),
            Effect::Message {
                id: n,
                from: 1,
                to: 2,
                ts: 77,
                text: format!("hello {n} ✓").into(),
                cid: n.is_multiple_of(2).then(|| Arc::from(format!("c{n}"))),
            },
            Effect::Conversation {
                lo: 1,
                hi: 2,
                id: n,
                from: 1,
            },
            Effect::Cid {
                from: 1,
                cid: "c".into(),
                id: n,
            },
            Effect::Unread {
                user: 2,
                from: 1,
                count: n,
            },
            Effect::ReadMark {
                user: 2,
                with: 1,
                upto: n,
            },
            Effect::Ui {
                user: 3,
                state: "{}".into(),
            },
        ]
    }

    /// A log of `records` sample records of `generation`, from sequence 0.
    fn log_of(generation: u64, records: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in 0..records {
            encode_record(generation, seq, &sample(seq), &mut out);
        }
        out
    }

    /// What [`scan`] finds in `file` for `generation`: records and end.
    fn check(file: &[u8], generation: u64, records: u64, end: ScanEnd) {
        let scan = scan(file, generation).expect("scan");
        let expected: Vec<_> = (0..records).map(sample).collect();
        assert_eq!(scan.records, expected);
        assert_eq!(scan.end, end);
        assert_eq!(scan.bytes, log_of(generation, records).len() as u64);
    }

    #[test]
    fn records_read_back_as_written() {
        check(&[], 5, 0, ScanEnd::FileEnd);
        check(&log_of(5, 3), 5, 3, ScanEnd::FileEnd);
        let mut zeros = log_of(5, 3);
        zeros.resize(zeros.len() + 4096, 0);
        check(&zeros, 5, 3, ScanEnd::Zeros);
        let mut short_zeros = log_of(5, 3);
        short_zeros.resize(short_zeros.len() + 3, 0);
        check(&short_zeros, 5, 3, ScanEnd::Zeros);
    }

    #[test]
    fn a_torn_tail_ends_the_log_at_every_cut() {
        let whole = log_of(5, 3);
        let two = log_of(5, 2).len();
        for cut in two + 1..whole.len() {
            check(&whole[..cut], 5, 2, ScanEnd::Torn);
            // The same cut over the zero-filled rest of the file: a header
            // cut short reads as another record's, a payload cut short
            // fails its checksum.
            let mut padded = whole[..cut].to_vec();
            padded.resize(whole.len() + 100, 0);
            let scan = scan(&padded, 5).expect("scan");
            assert_eq!(scan.records, vec![sample(0), sample(1)], "cut at {cut}");
            assert!(
                matches!(scan.end, ScanEnd::Torn | ScanEnd::NotNext),
                "cut at {cut}: {:?}",
                scan.end
            );
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_log_at_its_record() {
        let whole = log_of(5, 3);
        let two = log_of(5, 2).len();
        for at in two..whole.len() {
            let mut bad = whole.clone();
            bad[at] ^= 0x10;
            let scan = scan(&bad, 5).expect("scan");
            assert_eq!(scan.records.len(), 2, "bit flipped at {at}");
            assert_ne!(scan.end, ScanEnd::FileEnd);
        }
    }

    #[test]
    fn other_generations_and_sequences_are_not_replayed() {
        // Generation 6 written over the start of a longer generation 5.
        let mut file = log_of(5, 4);
        let six = log_of(6, 1);
        file[..six.len()].copy_from_slice(&six);
        check(&file, 6, 1, ScanEnd::NotNext);
        // Meta says 7: everything in the file is stale.
        check(&file, 7, 0, ScanEnd::NotNext);
        // A gap in the sequence.
        let mut gap = log_of(5, 1);
        encode_record(5, 2, &sample(2), &mut gap);
        check(&gap, 5, 1, ScanEnd::NotNext);
        // Garbage after the last record.
        let mut garbage = log_of(5, 2);
        garbage.extend_from_slice(b"not a record at all, just bytes");
        check(&garbage, 5, 2, ScanEnd::NotNext);
    }

    #[test]
    fn a_checksummed_payload_that_does_not_parse_is_an_error() {
        let mut out = Vec::new();
        encode_record(1, 0, &[Effect::NextMsgId(3)], &mut out);
        // Rewrite the tag and the checksum: a record as a buggy writer
        // would leave it.
        out[HEADER_BYTES] = 99;
        let crc = checksum(&out[..HEADER_BYTES], &out[HEADER_BYTES..]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        let e = scan(&out, 1).unwrap_err();
        assert!(e.contains("unknown effect tag 99"), "{e}");
    }

    #[test]
    fn a_batch_checkpoints_when_the_log_is_old_or_its_record_would_not_fit() {
        let dir = std::env::temp_dir().join(format!("switchboard-wal-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut wal, contents) = Wal::open(&dir.join(WAL_FILE_NAME)).unwrap();
        assert!(contents.is_empty());
        assert_eq!(
            wal.len,
            limits::WAL_GROW_BYTES as u64,
            "zero-filled at open"
        );
        wal.reset(3);
        let now = Instant::now();
        let effects = sample(1);
        assert_eq!(wal.plan(&effects, now, true), Plan::Append);
        wal.append(now, || {}).unwrap();
        assert_eq!(wal.bytes(), wal.buf.len() as u64);
        let written = std::fs::read(dir.join(WAL_FILE_NAME)).unwrap();
        assert_eq!(scan(&written, 3).unwrap().records, vec![effects.clone()]);
        // Just under the age, then at it (unless checkpoints are held off).
        let age = Duration::from_millis(limits::WAL_CHECKPOINT_AGE_MS);
        let almost = now + age - Duration::from_millis(1);
        assert_eq!(wal.plan(&effects, almost, true), Plan::Append);
        assert_eq!(
            wal.plan(&effects, now + age, true),
            Plan::Checkpoint(Why::Age)
        );
        assert_eq!(wal.plan(&effects, now + age, false), Plan::Append);
        // A record that ends exactly at the bound fits; one byte more does not.
        let record = wal.buf.len() as u64;
        wal.offset = limits::WAL_BYTES_MAX as u64 - record;
        assert_eq!(wal.plan(&effects, now, true), Plan::Append);
        wal.offset += 1;
        assert_eq!(wal.plan(&effects, now, false), Plan::Checkpoint(Why::Size));
        // A checkpoint starts the next generation from offset 0.
        wal.reset(4);
        assert_eq!((wal.bytes(), wal.generation()), (0, 4));
        assert_eq!(wal.plan(&effects, now + age, true), Plan::Append);
        // Growing past the preallocated size writes zeros up to the next step.
        wal.offset = wal.len - 10;
        wal.plan(&effects, now, true);
        wal.append(now, || {}).unwrap();
        assert_eq!(wal.len, 2 * limits::WAL_GROW_BYTES as u64);
        let size = std::fs::metadata(dir.join(WAL_FILE_NAME)).unwrap().len();
        assert_eq!(size, wal.len);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
