//! The write-ahead log: the files `wal` and `wal.1` in the data directory,
//! written in turn, and what makes an append durable.
//!
//! The writer applies each batch to sled without flushing it, and the syncer
//! writes the batch's sled writes to the current file as one frame and
//! `fdatasync`s it (its stream index groups are not in the frame: they are
//! indexed again from the records after a crash, `trees::RecentGroups`):
//! that is the acknowledgement's durability. One `fdatasync` of a small write to
//! a file whose blocks are already allocated costs a fraction of sled's flush
//! (`pwrite` and `sync_file_range` of its buffers) followed by an `fdatasync` of
//! sled's growing log file, which is what every batch paid before
//! (docs/BENCHMARKS.md, "A write-ahead log").
//!
//! sled is made durable at a checkpoint. When the next frames would pass the
//! current file's size cap, the syncer goes on in the other file, and a
//! checkpoint of everything handed over so far runs beside the appends on a
//! thread of its own: it flushes sled and `fdatasync`s sled's file. The file it
//! covers is written again only once it has finished (the syncer waits for it
//! if need be), so the frames a crash could still need are never overwritten.
//! When the log is opened, the frames of batches that sled lost are written to
//! sled again (`writer::replay`), sled is made durable, and both files are
//! emptied; a clean close empties them too.
//!
//! A frame: `"SLW2"`, the payload's length (u32 BE), the durable head when it
//! was written (u64 BE: the last position an `fdatasync` had covered, so every
//! position up to it was acknowledged or about to be), the blake3 hash of the
//! length, that head and the payload, then the payload (`writer::BatchWrites`).
//! Frames of log format 6 (`"SLW1"`) have no head, and are still read. Frames
//! follow one another from the start of the file; the first one that is
//! incomplete or does not match its hash ends the file's frames: it is a write
//! a crash cut short, so it was never acknowledged, unless a frame written
//! later says otherwise. The rest of the file is searched for whole frames,
//! and one whose durable head is past what the files give back proves that a
//! durable frame was damaged: opening the log then fails, naming the first
//! position lost, and changes nothing (only the last `fdatasync`'s frames can
//! be torn, and a frame written after them names a head that covers them).
//! Past the frames the file holds zeros, or the frames of an earlier turn
//! (whose heads are below what sled holds): a file written again keeps
//! its blocks (it is not truncated, so its `fdatasync`s have no file size to
//! record and no zeros to write), and the frames after the new ones are of
//! batches a checkpoint made durable in sled, which `writer::replay` skips: it
//! ends a file's frames at the first that does not follow the one before it
//! (a power cut can leave such an old frame between two new ones, when the disk
//! kept the later frame's sectors and not the earlier one's), and orders the
//! frames of both files by position. A file grows a mebibyte at a
//! time, with zeros, up to its cap.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The WAL's two files in the data directory, written in turn.
pub(crate) const WAL_FILES: [&str; 2] = ["wal", "wal.1"];

/// The size cap of each of the WAL's files by default: reaching it switches files and starts a checkpoint.
pub(crate) const WAL_LEN_MAX: u64 = 16 * 1024 * 1024;

/// The frames of log format 6, without the durable head.
const MAGIC_V1: [u8; 4] = *b"SLW1";
const HEADER_LEN_V1: usize = 4 + 4 + 32;
const MAGIC: [u8; 4] = *b"SLW2";
const HEADER_LEN: usize = 4 + 4 + 8 + 32;

/// How much the file grows at a time, written with zeros ahead of the frames.
const GROWTH: u64 = 1024 * 1024;

pub(crate) struct Wal {
    file: File,
    /// Where the next frame goes.
    offset: u64,
    /// How far the file is written, with frames or zeros.
    allocated: u64,
    len_max: u64,
}

impl Wal {
    /// Open the WAL file `name` in `dir`, creating it (durably) if there is
    /// none, and read the payloads of its frames. The next frame is written
    /// where the last one read ends; the opener replays the frames and then
    /// calls [`Wal::start_over`] once sled holds them durably.
    fn open(dir: &Path, name: &str, len_max: u64) -> io::Result<(Wal, WalFrames)> {
        let path = dir.join(name);
        let existed = path.exists();
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path)?;
        if !existed {
            File::open(dir)?.sync_all()?;
        }
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes)?;
        let (payloads, end) = frames(&bytes);
        // Past the frames: zeros, frames of an earlier turn, a frame cut short,
        // or a damaged one (a sector of zeros too) and whole frames after it.
        let durable_head =
            payloads.iter().filter_map(|frame| frame.durable_head).max().max(later_durable_head(&bytes, end));
        let payloads = payloads.into_iter().map(|frame| frame.payload.to_vec()).collect();
        let wal = Wal { file, offset: end as u64, allocated: bytes.len() as u64, len_max: len_max.max(1) };
        Ok((wal, WalFrames { payloads, durable_head }))
    }

    /// Whether frames with payloads of these lengths fit under the size cap
    /// after the ones written since the file was last emptied.
    pub fn fits(&self, payload_lens: impl Iterator<Item = usize>) -> bool {
        self.offset + frames_len(payload_lens) <= self.len_max
    }

    /// Whether frames were written since the file was last emptied or written again.
    pub fn holds_frames(&self) -> bool {
        self.offset > 0
    }

    /// Write the next frames from the start again, over frames whose batches
    /// sled holds durably (a checkpoint covered them): the file keeps its
    /// blocks, and the older frames past the new ones are skipped at a replay.
    fn write_again(&mut self) {
        self.offset = 0;
    }

    /// Write one frame, which `durable_head` says every position up to was
    /// durable when it was written; it is durable only after [`Wal::sync`].
    pub fn write(&mut self, payload: &[u8], durable_head: u64) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a write-ahead log frame over 4 GiB"))?;
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&MAGIC);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&durable_head.to_be_bytes());
        frame.extend_from_slice(frame_hash(len, Some(durable_head), payload).as_bytes());
        frame.extend_from_slice(payload);
        let end = self.offset + frame.len() as u64;
        if end > self.allocated {
            // Zeros ahead, so that the next frames overwrite blocks the file already has.
            let grown = (self.allocated + GROWTH).min(self.len_max).max(end);
            self.file.write_all_at(&vec![0; (grown - end) as usize], end)?;
            self.allocated = grown;
        }
        self.file.write_all_at(&frame, self.offset)?;
        self.offset = end;
        Ok(())
    }

    /// `fdatasync`: every frame written so far is durable once it returns.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Empty the file, durably. Only once sled holds every frame's writes
    /// durably: for the log a frame found again later would do no harm (it is of
    /// a batch sled already has, and replaying skips it), but the frame of the
    /// batch that made a subject's key holds the key, and after a forget a power
    /// cut must not bring it back.
    fn start_over(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data().map_err(|error| io::Error::new(error.kind(), format!("fdatasync: {error}")))?;
        self.offset = 0;
        self.allocated = 0;
        Ok(())
    }
}

/// The WAL's two files, written in turn (see the module's doc).
pub(crate) struct Wals {
    files: [Wal; 2],
    /// The file frames are written to.
    current: usize,
}

impl Wals {
    /// Open both files in `dir` (see [`Wal::open`]) and read the payloads of
    /// their frames, file by file, the current ones and any of an earlier turn:
    /// `writer::replay` keeps each file's frames while they follow one another
    /// and orders them by position.
    pub fn open(dir: &Path, len_max: u64) -> io::Result<(Wals, [WalFrames; 2])> {
        let (first, first_payloads) = Wal::open(dir, WAL_FILES[0], len_max)?;
        let (second, second_payloads) = Wal::open(dir, WAL_FILES[1], len_max)?;
        Ok((Wals { files: [first, second], current: 0 }, [first_payloads, second_payloads]))
    }

    /// The file frames are written to now.
    pub fn current(&mut self) -> &mut Wal {
        &mut self.files[self.current]
    }

    /// Go on in the other file, from its start. Only once a checkpoint has
    /// made sled hold every batch of that file durably.
    pub fn switch(&mut self) {
        self.current = 1 - self.current;
        self.files[self.current].write_again();
    }

    /// Whether frames with payloads of these lengths fit in a file of their own.
    pub fn fits_empty(&self, payload_lens: impl Iterator<Item = usize>) -> bool {
        frames_len(payload_lens) <= self.files[self.current].len_max
    }

    /// Whether either file holds frames written since it was last emptied.
    pub fn holds_frames(&self) -> bool {
        self.files.iter().any(Wal::holds_frames)
    }

    /// Empty both files (see [`Wal::start_over`]); frames go to the first one next.
    pub fn start_over(&mut self) -> io::Result<()> {
        for file in &mut self.files {
            file.start_over()?;
        }
        self.current = 0;
        Ok(())
    }
}

/// What one file holds: the payloads of its frames, in order, and the highest
/// durable head any whole frame in it names, wherever it lies (see the module's doc).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct WalFrames {
    pub payloads: Vec<Vec<u8>>,
    pub durable_head: Option<u64>,
}

/// The length of frames with payloads of these lengths.
fn frames_len(payload_lens: impl Iterator<Item = usize>) -> u64 {
    payload_lens.map(|len| (HEADER_LEN + len) as u64).sum()
}

fn frame_hash(len: u32, durable_head: Option<u64>, payload: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&len.to_be_bytes());
    if let Some(head) = durable_head {
        hasher.update(&head.to_be_bytes());
    }
    hasher.update(payload);
    hasher.finalize()
}

/// A whole frame read back.
struct Frame<'a> {
    payload: &'a [u8],
    /// `None` for a frame of log format 6.
    durable_head: Option<u64>,
    /// Where the next frame starts.
    end: usize,
}

/// The whole frame at `at` in `bytes`, if there is one.
fn frame_at(bytes: &[u8], at: usize) -> Option<Frame<'_>> {
    let magic = bytes.get(at..at + 4)?;
    let header_len = match magic {
        _ if magic == MAGIC => HEADER_LEN,
        _ if magic == MAGIC_V1 => HEADER_LEN_V1,
        _ => return None,
    };
    let header = bytes.get(at..at + header_len)?;
    let len = u32::from_be_bytes(header[4..8].try_into().ok()?);
    let durable_head = match header_len {
        HEADER_LEN => Some(u64::from_be_bytes(header[8..16].try_into().ok()?)),
        _ => None,
    };
    let hash = &header[header_len - 32..];
    let start = at + header_len;
    let payload = bytes.get(start..start.checked_add(len as usize)?)?;
    (frame_hash(len, durable_head, payload).as_bytes() == hash).then_some(Frame {
        payload,
        durable_head,
        end: start + len as usize,
    })
}

/// The whole frames at the start of `bytes`, and where they end.
fn frames(bytes: &[u8]) -> (Vec<Frame<'_>>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(frame) = frame_at(bytes, at) {
        at = frame.end;
        frames.push(frame);
    }
    (frames, at)
}

/// The highest durable head named by a whole frame anywhere past `end`, where
/// the frames stopped: a frame past a damaged one, or of an earlier turn.
fn later_durable_head(bytes: &[u8], end: usize) -> Option<u64> {
    let mut highest = None;
    let mut at = end + 1;
    // The magic's first byte, then the rest: a file of zeros is passed over fast.
    while let Some(found) = bytes.get(at..).and_then(|rest| rest.iter().position(|byte| *byte == MAGIC[0])) {
        at += found;
        if bytes.get(at..at + 4) != Some(&MAGIC[..]) {
            at += 1;
            continue;
        }
        match frame_at(bytes, at) {
            Some(frame) => {
                highest = highest.max(frame.durable_head);
                at = frame.end;
            }
            None => at += 1,
        }
    }
    highest
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAL_FILE: &str = WAL_FILES[0];

    fn wal_in(dir: &Path, len_max: u64) -> (Wal, Vec<Vec<u8>>) {
        let (wal, found) = Wal::open(dir, WAL_FILE, len_max).expect("opens");
        (wal, found.payloads)
    }

    fn wals_in(dir: &Path, len_max: u64) -> (Wals, [Vec<Vec<u8>>; 2]) {
        let (wals, [first, second]) = Wals::open(dir, len_max).expect("opens");
        (wals, [first.payloads, second.payloads])
    }

    #[test]
    fn frames_read_back_in_order_and_a_torn_one_ends_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wal, found) = wal_in(dir.path(), WAL_LEN_MAX);
        assert!(found.is_empty());
        wal.write(b"first", 0).expect("writes");
        wal.write(&[7; 300], 0).expect("writes");
        wal.write(b"third", 0).expect("writes");
        wal.sync().expect("syncs");
        drop(wal);
        let (_, found) = wal_in(dir.path(), WAL_LEN_MAX);
        assert_eq!(found, vec![b"first".to_vec(), vec![7; 300], b"third".to_vec()]);
        assert_eq!(std::fs::metadata(dir.path().join(WAL_FILE)).expect("exists").len(), GROWTH, "grown with zeros");

        // A byte of the second frame's payload flipped: the WAL ends before it.
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).expect("reads");
        bytes[HEADER_LEN + 5 + HEADER_LEN + 10] ^= 1;
        std::fs::write(&path, &bytes).expect("writes");
        let (_, found) = wal_in(dir.path(), WAL_LEN_MAX);
        assert_eq!(found, vec![b"first".to_vec()]);

        // The last frame cut short: the two before it stand.
        bytes[HEADER_LEN + 5 + HEADER_LEN + 10] ^= 1;
        bytes.truncate(2 * HEADER_LEN + 5 + 300 + HEADER_LEN + 2);
        std::fs::write(&path, &bytes).expect("writes");
        let (_, found) = wal_in(dir.path(), WAL_LEN_MAX);
        assert_eq!(found, vec![b"first".to_vec(), vec![7; 300]]);
    }

    /// The durable heads frames name are read from the frames, and from whole
    /// frames past one that does not read, or that was zeroed.
    #[test]
    fn the_highest_durable_head_is_found_past_a_damaged_frame() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wal, _) = wal_in(dir.path(), WAL_LEN_MAX);
        wal.write(b"first", 0).expect("writes");
        wal.write(b"second", 3).expect("writes");
        wal.write(b"third", 5).expect("writes");
        drop(wal);
        let open = || Wal::open(dir.path(), WAL_FILE, WAL_LEN_MAX).expect("opens").1;
        let found = open();
        assert_eq!((found.payloads.len(), found.durable_head), (3, Some(5)));

        let path = dir.path().join(WAL_FILE);
        let bytes = std::fs::read(&path).expect("reads");
        let mut damaged = bytes.clone();
        damaged[HEADER_LEN + 5 + HEADER_LEN + 2] ^= 1;
        std::fs::write(&path, &damaged).expect("writes");
        assert_eq!(open(), WalFrames { payloads: vec![b"first".to_vec()], durable_head: Some(5) });

        // The second frame's place zeroed: the third is found past it all the same.
        let mut zeroed = bytes.clone();
        zeroed[HEADER_LEN + 5..2 * HEADER_LEN + 5 + 6].fill(0);
        std::fs::write(&path, &zeroed).expect("writes");
        assert_eq!(open(), WalFrames { payloads: vec![b"first".to_vec()], durable_head: Some(5) });

        // The last frame cut short, as a crash leaves it: nothing past it.
        let frames_end = 3 * HEADER_LEN + 5 + 6 + 5;
        std::fs::write(&path, &bytes[..frames_end - 3]).expect("writes");
        assert_eq!(open().durable_head, Some(3));
    }

    #[test]
    fn writing_after_open_continues_and_starting_over_forgets_every_frame() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wal, _) = wal_in(dir.path(), 200);
        wal.write(b"one", 0).expect("writes");
        drop(wal);
        let (mut wal, found) = wal_in(dir.path(), 200);
        assert_eq!(found, vec![b"one".to_vec()]);
        assert!(wal.fits([100].into_iter()));
        assert!(!wal.fits([100, 100].into_iter()), "over the size cap");
        wal.write(b"two", 0).expect("writes");
        drop(wal);
        let (mut wal, found) = wal_in(dir.path(), 200);
        assert_eq!(found, vec![b"one".to_vec(), b"two".to_vec()]);
        wal.start_over().expect("empties");
        wal.write(b"three", 0).expect("writes");
        drop(wal);
        assert_eq!(std::fs::metadata(dir.path().join(WAL_FILE)).expect("exists").len(), 200, "grown up to the cap");
        let (_, found) = wal_in(dir.path(), 200);
        assert_eq!(found, vec![b"three".to_vec()]);
    }

    #[test]
    fn the_files_take_turns_and_a_file_written_again_keeps_its_older_frames_after_the_new_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut wals, found) = wals_in(dir.path(), 200);
        assert!(found.concat().is_empty());
        assert!(!wals.holds_frames());
        wals.current().write(b"one", 0).expect("writes");
        wals.current().write(b"two", 0).expect("writes");
        wals.switch();
        wals.current().write(b"three", 0).expect("writes");
        assert!(wals.holds_frames());
        drop(wals);
        let (mut wals, found) = wals_in(dir.path(), 200);
        assert_eq!(found, [vec![b"one".to_vec(), b"two".to_vec()], vec![b"three".to_vec()]]);

        // Back to the first file: written from its start, over "one"; "two",
        // of the turn before, still follows.
        wals.switch();
        wals.switch();
        wals.current().write(b"ONE", 0).expect("writes");
        drop(wals);
        let (mut wals, found) = wals_in(dir.path(), 200);
        assert_eq!(found, [vec![b"ONE".to_vec(), b"two".to_vec()], vec![b"three".to_vec()]]);
        let len = |name: &str| std::fs::metadata(dir.path().join(name)).expect("exists").len();
        assert_eq!(len(WAL_FILES[0]), 200, "written again, not truncated");

        wals.start_over().expect("empties");
        assert_eq!((len(WAL_FILES[0]), len(WAL_FILES[1])), (0, 0));
        drop(wals);
        let (_, found) = wals_in(dir.path(), 200);
        assert!(found.concat().is_empty());
    }
}
