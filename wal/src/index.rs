//! The index, kept in fjall: stream catalogue, sparse offset index, consumer cursors and
//! per-shard checkpoints.
//!
//! The log is the source of truth. Everything here can be rebuilt by scanning the log;
//! the per-shard checkpoint says how far the index is known to be complete, so recovery
//! only re-indexes the log beyond it. fjall's journal is flushed to the OS on every write
//! (so a `kill -9` loses nothing) and `fdatasync`ed where the sync mode promises
//! durability: on stream creation, cursor commits (mode `Always`) and checkpoints.
//!
//! Offset index: for each stream, *blocks* of up to [`BLOCK_LEN`] consecutive record
//! positions, keyed by (stream, first offset of the block). A lookup takes the last block
//! whose first offset is at or below the wanted one. Every record's position is indexed,
//! so a read never scans unrelated records of other streams sharing the shard. A block's
//! positions are delta-encoded (`block_codec`, one to five bytes each). The newest positions of
//! a stream wait in memory until its block is full or the shard checkpoints; a checkpoint
//! stores them as a (shorter) block and drops them from memory, so the memory they take is
//! bounded by what the log took in since the last checkpoint, however many streams there are.

use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::error::{Error, Result};
use crate::options::{Retention, SyncMode};

/// Positions per full index block. Larger blocks mean fewer index entries to write, flush
/// and replay (recovery re-indexed 2 M records in 278 ms with 256 against 436 ms with 64;
/// with format 3, 183-217 ms with 1024 against 204-254 ms with 256, fjall's open taking
/// 14-20 ms instead of 36-38) at the cost of decoding more positions per random lookup (a
/// single-record read at a random offset: 23 µs against 19-23 µs; sequential reads reuse
/// the decoded block). Blocks of another length stay valid: a lookup takes the last block
/// at or below the offset, whatever its length.
pub(crate) const BLOCK_LEN: usize = 1024;

/// Most bytes of fjall journal before its memory tables are written out. The journal is
/// replayed at every open: with 200 000 streams the default bound (512 MiB) let it reach 74 MB,
/// and a restart after `kill -9` took 4.0 s (1.7 s with this bound, 1.2 MB left to replay).
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// Most bytes a keyspace holds in memory before fjall writes them to a table (its default is
/// 64 MiB). Smaller tables are written sooner, so an open replays a journal whose entries
/// are mostly in tables already: a clean restart with 100 000 streams (36 MB of journal)
/// opened in 1.4-1.7 s instead of 2.2 s. Only keyspaces created with it get it: fjall keeps
/// the size an existing index was made with.
const MAX_MEMTABLE_BYTES: u64 = 8 << 20;

/// Where a record is: the segment (by its first LSN), the byte position in it (in the
/// segment's uncompressed layout) and the record's encoded length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) segment: u64,
    pub(crate) at: u64,
    pub(crate) len: u32,
}

/// `at` of a position whose record was removed by compaction.
pub(crate) const REMOVED: u64 = u64::MAX;

/// The layout of index blocks (`block_codec`). An index of format 2 (a subset of 3) is
/// kept; one of any other layout is upgraded on open by dropping its blocks and
/// checkpoints, so the log is re-indexed.
const INDEX_FORMAT: u64 = 3;
/// Formats whose blocks this build decodes as they are.
const READABLE_INDEX_FORMATS: [u64; 2] = [2, 3];
const INDEX_FORMAT_KEY: &str = "index_format";

/// Per-stream contents of one sealed segment, used by retention to tell when nothing live
/// remains in a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SegStream {
    pub(crate) min_offset: u64,
    pub(crate) max_offset: u64,
    pub(crate) max_ts: u64,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

/// What one segment holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SegSummary {
    pub(crate) streams: crate::hash::IdMap<SegStream>,
    /// The segment holds catalogue records (so it is compacted, never deleted).
    pub(crate) catalog: bool,
}

impl SegSummary {
    pub(crate) fn add(&mut self, stream: u64, offset: u64, ts: u64, bytes: u64) {
        let e = self.streams.entry(stream).or_insert(SegStream { min_offset: offset, ..SegStream::default() });
        e.min_offset = e.min_offset.min(offset);
        e.max_offset = e.max_offset.max(offset);
        e.max_ts = e.max_ts.max(ts);
        e.records += 1;
        e.bytes += bytes;
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.catalog as u8];
        for (id, s) in &self.streams {
            for x in [*id, s.min_offset, s.max_offset, s.max_ts, s.records, s.bytes] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v
    }

    fn decode(b: &[u8]) -> Result<SegSummary> {
        let (flag, rest) = b.split_first().ok_or_else(|| Error::Index("empty segment summary".into()))?;
        if !rest.len().is_multiple_of(48) {
            return Err(Error::Index("segment summary has a partial entry".into()));
        }
        let mut out = SegSummary { catalog: *flag != 0, ..SegSummary::default() };
        for c in rest.chunks_exact(48) {
            out.streams.insert(
                read_u64(c, 0)?,
                SegStream {
                    min_offset: read_u64(c, 8)?,
                    max_offset: read_u64(c, 16)?,
                    max_ts: read_u64(c, 24)?,
                    records: read_u64(c, 32)?,
                    bytes: read_u64(c, 40)?,
                },
            );
        }
        Ok(out)
    }
}

/// What the catalogue stores about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamMeta {
    pub(crate) id: u64,
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) shard: u32,
    /// First offset still stored (records below were removed by retention).
    pub(crate) first_offset: u64,
    /// Next offset to assign, as of the last checkpoint.
    pub(crate) next_offset: u64,
    pub(crate) retention: Retention,
    /// Key compaction enabled.
    pub(crate) compacted: bool,
}

/// What a checkpoint stores of one stream: its catalogue entry and its open index block
/// (first offset, positions).
pub(crate) type StreamCheckpoint = (StreamMeta, Option<(u64, Vec<Pos>)>);

/// A shard's checkpoint: every record before `pos` is in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) pos: Pos,
    pub(crate) next_lsn: u64,
}

pub(crate) struct Index {
    db: Database,
    streams: Keyspace,
    blocks: Keyspace,
    segments: Keyspace,
    cursors: Keyspace,
    meta: Keyspace,
    sync: SyncMode,
    /// Serialises the writers of stored positions and stream settings: a checkpoint
    /// (snapshot of the open blocks, commit, dropping them from memory) and compaction's
    /// position updates and retention's new first offsets. The commit of a checkpoint
    /// runs on its own thread, after the guard is released: `checkpoints` counts those in
    /// flight, and maintenance waits for them (see [`Index::positions_guard`]).
    positions: std::sync::Mutex<()>,
    checkpoints: std::sync::Mutex<usize>,
    checkpoints_done: std::sync::Condvar,
    /// The highest `next_stream_id` written: streams are created concurrently, and the
    /// stored value must only grow.
    next_stream_id: std::sync::Mutex<u64>,
}

const STREAM_NAME_PREFIX: u8 = b'n';
const STREAM_META_PREFIX: u8 = b'm';

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn read_u64(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| Error::Index(format!("index value too short ({} bytes, need {})", b.len(), at + 8)))
}

fn opt_u64(v: Option<u64>) -> u64 {
    v.unwrap_or(u64::MAX)
}

fn from_opt(v: u64) -> Option<u64> {
    (v != u64::MAX).then_some(v)
}

impl StreamMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.name.len());
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&(self.shard as u64).to_le_bytes());
        v.extend_from_slice(&self.first_offset.to_le_bytes());
        v.extend_from_slice(&self.next_offset.to_le_bytes());
        v.extend_from_slice(&opt_u64(self.retention.max_age.map(|d| d.as_millis() as u64)).to_le_bytes());
        v.extend_from_slice(&opt_u64(self.retention.max_bytes).to_le_bytes());
        v.extend_from_slice(&opt_u64(self.retention.max_records).to_le_bytes());
        v.extend_from_slice(&(self.compacted as u64).to_le_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Result<StreamMeta> {
        let name = b.get(64..).ok_or_else(|| Error::Index("stream record too short".into()))?;
        Ok(StreamMeta {
            id: read_u64(b, 0)?,
            shard: read_u64(b, 8)? as u32,
            first_offset: read_u64(b, 16)?,
            next_offset: read_u64(b, 24)?,
            retention: Retention {
                max_age: from_opt(read_u64(b, 32)?).map(std::time::Duration::from_millis),
                max_bytes: from_opt(read_u64(b, 40)?),
                max_records: from_opt(read_u64(b, 48)?),
            },
            compacted: read_u64(b, 56)? != 0,
            name: std::str::from_utf8(name).map_err(|_| Error::Index("stream name is not UTF-8".into()))?.into(),
        })
    }
}

fn meta_key(id: u64) -> Vec<u8> {
    let mut k = vec![STREAM_META_PREFIX];
    k.extend_from_slice(&be(id));
    k
}

fn name_key(name: &str) -> Vec<u8> {
    let mut k = vec![STREAM_NAME_PREFIX];
    k.extend_from_slice(name.as_bytes());
    k
}

fn block_key(stream: u64, first: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&be(stream));
    k[8..].copy_from_slice(&be(first));
    k
}

/// The first offset of a block from its key (`None` for a malformed key).
fn block_start(key: &[u8]) -> Option<u64> {
    key.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

fn cursor_key(stream: u64, consumer: &str) -> Vec<u8> {
    let mut k = be(stream).to_vec();
    k.extend_from_slice(consumer.as_bytes());
    k
}

fn checkpoint_key(shard: u32) -> Vec<u8> {
    format!("checkpoint/{shard:08}").into_bytes()
}

fn encode_positions(positions: &[Pos]) -> Vec<u8> {
    crate::block_codec::encode(positions)
}

fn encode_checkpoint(cp: &Checkpoint) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&cp.pos.segment.to_le_bytes());
    v.extend_from_slice(&cp.pos.at.to_le_bytes());
    v.extend_from_slice(&cp.next_lsn.to_le_bytes());
    v
}

fn segment_key(shard: u32, first_lsn: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.to_be_bytes());
    k[4..].copy_from_slice(&be(first_lsn));
    k
}

impl Index {
    pub(crate) fn open(dir: &Path, sync: SyncMode) -> Result<Index> {
        let db = Database::builder(dir).max_journaling_size(MAX_JOURNAL_BYTES).open()?;
        let ks =
            |name: &str| db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE_BYTES));
        let index = Index {
            streams: ks("streams")?,
            blocks: ks("blocks")?,
            segments: ks("segments")?,
            cursors: ks("cursors")?,
            meta: ks("meta")?,
            db,
            sync,
            positions: std::sync::Mutex::new(()),
            checkpoints: std::sync::Mutex::new(0),
            checkpoints_done: std::sync::Condvar::new(),
            // Ids handed out are at or above the stored value, so writes start from there.
            next_stream_id: std::sync::Mutex::new(0),
        };
        index.upgrade_format()?;
        Ok(index)
    }

    /// An index written with another block layout (or a new one) gets the current layout:
    /// its blocks are dropped together with the checkpoints that vouch for them, so the next
    /// recovery re-indexes every shard. Durable before anything else is written, so a crash
    /// during the re-index just re-indexes again.
    fn upgrade_format(&self) -> Result<()> {
        match self.get_meta_u64(INDEX_FORMAT_KEY)? {
            Some(INDEX_FORMAT) => return Ok(()),
            Some(f) if READABLE_INDEX_FORMATS.contains(&f) => {
                // Readable as it is; marked with the new format so that an older build,
                // which cannot read the new kinds of positions, re-indexes instead.
                self.meta.insert(INDEX_FORMAT_KEY, INDEX_FORMAT.to_le_bytes().to_vec())?;
                self.db.persist(PersistMode::SyncData)?;
                return Ok(());
            }
            _ => {}
        }
        if !self.blocks.is_empty()? {
            tracing::info!("index blocks are in an older layout; the log will be re-indexed");
        }
        self.blocks.clear()?;
        let checkpoints: Vec<_> = self.meta.prefix("checkpoint/").map(|g| g.key()).collect::<Result<_, _>>()?;
        let mut b = self.db.batch();
        for k in checkpoints {
            b.remove(&self.meta, k);
        }
        b.insert(&self.meta, INDEX_FORMAT_KEY, INDEX_FORMAT.to_le_bytes().to_vec());
        b.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    /// Excludes checkpoint snapshots, and returns once no checkpoint is being committed:
    /// what compaction and retention hold while they change positions or stream settings
    /// (see `Index::positions`).
    pub(crate) fn positions_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        let g = self.positions_guard_now();
        let mut n = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.checkpoints_done.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        g
    }

    /// The guard alone, for the writer taking a checkpoint's snapshot (it knows whether
    /// its own checkpoint is in flight, and no other shard's is its business).
    pub(crate) fn positions_guard_now(&self) -> std::sync::MutexGuard<'_, ()> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A checkpoint snapshot was taken under the guard and goes to be committed.
    pub(crate) fn checkpoint_started(&self) {
        *self.checkpoints.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    /// A checkpoint counted by [`Index::checkpoint_started`] is committed (or failed).
    pub(crate) fn checkpoint_finished(&self) {
        let mut n = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        drop(n);
        self.checkpoints_done.notify_all();
    }

    /// Makes everything written so far durable per the sync mode: synced, or with `None`
    /// at least handed to the OS. fjall buffers its journal in the process otherwise, and a
    /// `kill -9` — which `None` promises to survive — would lose index writes that files on
    /// disk already depend on (a compaction's marker, positions in a rewritten segment, a
    /// checkpoint).
    pub(crate) fn persist(&self) -> Result<()> {
        let mode = if self.sync == SyncMode::None { PersistMode::Buffer } else { PersistMode::SyncData };
        self.db.persist(mode)?;
        Ok(())
    }

    pub(crate) fn get_meta_u64(&self, key: &str) -> Result<Option<u64>> {
        self.meta.get(key)?.map(|v| read_u64(&v, 0)).transpose()
    }

    pub(crate) fn load_streams(&self) -> Result<Vec<StreamMeta>> {
        let mut out = Vec::new();
        for g in self.streams.prefix([STREAM_META_PREFIX]) {
            let (_, v) = g.into_inner()?;
            out.push(StreamMeta::decode(&v)?);
        }
        Ok(out)
    }

    /// Writes a new stream, not synced: called *before* the stream's catalogue record goes
    /// to the log, so the next checkpoint past that record — committed later than this
    /// batch — makes it durable, and until then recovery restores the stream from the
    /// record (see `Wal::create_stream`).
    pub(crate) fn create_stream(&self, meta: &StreamMeta) -> Result<()> {
        let mut next = self.next_stream_id.lock().unwrap_or_else(|p| p.into_inner());
        *next = (*next).max(meta.id + 1);
        let mut b = self.db.batch();
        b.insert(&self.streams, name_key(&meta.name), be(meta.id).to_vec());
        b.insert(&self.streams, meta_key(meta.id), meta.encode());
        b.insert(&self.meta, "next_stream_id", next.to_le_bytes().to_vec());
        b.commit()?;
        Ok(())
    }

    /// Stores a stream's settings (first offset, retention). The stored `next_offset` is
    /// kept: it belongs to the shard's checkpoint and changes only together with it
    /// ([`Index::commit_checkpoint`]), or recovery from that checkpoint would be inconsistent.
    pub(crate) fn put_stream_settings(&self, meta: &StreamMeta) -> Result<()> {
        let stored = self.streams.get(meta_key(meta.id))?.map(|v| StreamMeta::decode(&v)).transpose()?;
        let next_offset = stored.map_or(0, |m| m.next_offset);
        self.streams.insert(meta_key(meta.id), StreamMeta { next_offset, ..meta.clone() }.encode())?;
        Ok(())
    }

    /// Atomically stores a shard's checkpoint together with the state it describes: each
    /// stream's catalogue entry (with its next offset) and its open index block. One fjall
    /// batch, so a crash leaves either the old checkpoint with the old state or the new
    /// with the new — never a mix.
    pub(crate) fn commit_checkpoint(
        &self,
        shard: u32,
        cp: Option<&Checkpoint>,
        streams: &[StreamCheckpoint],
    ) -> Result<()> {
        self.commit_checkpoints(&[(shard, cp, streams)])
    }

    /// [`Index::commit_checkpoint`] for several shards at once: one batch, one sync (the
    /// end of recovery checkpoints every shard).
    pub(crate) fn commit_checkpoints(&self, shards: &[(u32, Option<&Checkpoint>, &[StreamCheckpoint])]) -> Result<()> {
        let mut b = self.db.batch();
        for &(shard, cp, streams) in shards {
            for (meta, block) in streams {
                b.insert(&self.streams, meta_key(meta.id), meta.encode());
                if let Some((first, positions)) = block {
                    b.insert(&self.blocks, block_key(meta.id, *first).to_vec(), encode_positions(positions));
                }
            }
            if let Some(cp) = cp {
                b.insert(&self.meta, checkpoint_key(shard), encode_checkpoint(cp));
            }
        }
        b.commit()?;
        self.persist()
    }

    pub(crate) fn put_block(&self, stream: u64, first: u64, positions: &[Pos]) -> Result<()> {
        self.blocks.insert(block_key(stream, first), encode_positions(positions))?;
        Ok(())
    }

    /// Writes many blocks (stream, first offset, positions) as one batch: one journal write
    /// instead of one per block (recovery re-indexes in bulk).
    pub(crate) fn put_blocks(&self, blocks: &[(u64, u64, Vec<Pos>)]) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let mut b = self.db.batch();
        for (stream, first, positions) in blocks {
            b.insert(&self.blocks, block_key(*stream, *first).to_vec(), encode_positions(positions));
        }
        b.commit()?;
        Ok(())
    }

    /// The position of `offset` in `stream`, from the block that covers it, together with
    /// the whole block (readers walk it for the following offsets).
    pub(crate) fn find_block(&self, stream: u64, offset: u64) -> Result<Option<(u64, Vec<Pos>)>> {
        self.find_block_upto(stream, offset, u64::MAX)
    }

    /// [`Index::find_block`], decoding the block's positions only up to offset `upto` (a
    /// read wants no more).
    pub(crate) fn find_block_upto(&self, stream: u64, offset: u64, upto: u64) -> Result<Option<(u64, Vec<Pos>)>> {
        let lo = block_key(stream, 0);
        let hi = block_key(stream, offset);
        let found = self.blocks.range::<&[u8], _>((Bound::Included(&lo[..]), Bound::Included(&hi[..]))).next_back();
        match found {
            None => Ok(None),
            Some(g) => {
                let (k, v) = g.into_inner()?;
                let first = block_start(&k).ok_or_else(|| Error::Index("bad block key".into()))?;
                let limit = usize::try_from(upto.saturating_sub(first).saturating_add(1)).unwrap_or(usize::MAX);
                Ok(Some((first, crate::block_codec::decode_prefix(&v, limit)?)))
            }
        }
    }

    /// Removes every index block of a stream (before a full re-index).
    pub(crate) fn delete_blocks(&self, stream: u64) -> Result<()> {
        let keys: Vec<_> = self.blocks.prefix(be(stream)).map(|g| g.key()).collect::<Result<_, _>>()?;
        let mut b = self.db.batch();
        for k in keys {
            b.remove(&self.blocks, k);
        }
        b.commit()?;
        Ok(())
    }

    /// Removes the blocks that only cover offsets below `first` (after retention).
    pub(crate) fn delete_blocks_below(&self, stream: u64, first: u64) -> Result<()> {
        let lo = block_key(stream, 0);
        let hi = block_key(stream, first);
        let keys: Vec<Vec<u8>> = self
            .blocks
            .range::<&[u8], _>((Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
            .map(|g| g.into_inner().map(|(k, v)| (k.to_vec(), crate::block_codec::count(&v).unwrap_or(u64::MAX))))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|(k, n)| {
                let start = block_start(k).unwrap_or(u64::MAX);
                start.saturating_add(*n) <= first
            })
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.blocks.remove(k)?;
        }
        Ok(())
    }

    pub(crate) fn put_segment(&self, shard: u32, first_lsn: u64, summary: &SegSummary) -> Result<()> {
        self.segments.insert(segment_key(shard, first_lsn), summary.encode())?;
        Ok(())
    }

    pub(crate) fn segment(&self, shard: u32, first_lsn: u64) -> Result<Option<SegSummary>> {
        self.segments.get(segment_key(shard, first_lsn))?.map(|v| SegSummary::decode(&v)).transpose()
    }

    pub(crate) fn delete_segment(&self, shard: u32, first_lsn: u64) -> Result<()> {
        self.segments.remove(segment_key(shard, first_lsn))?;
        Ok(())
    }

    /// Sets a durable flag (a key with no value) in the meta keyspace.
    pub(crate) fn put_meta_flag(&self, key: &str) -> Result<()> {
        self.meta.insert(key, Vec::<u8>::new())?;
        self.persist()
    }

    pub(crate) fn remove_meta_flag(&self, key: &str) -> Result<()> {
        self.meta.remove(key)?;
        self.persist()
    }

    /// The flags whose key starts with `prefix`.
    pub(crate) fn meta_flags(&self, prefix: &str) -> Result<Vec<String>> {
        self.meta
            .prefix(prefix)
            .map(|g| g.key().map(|k| String::from_utf8_lossy(&k).into_owned()).map_err(Error::from))
            .collect()
    }

    pub(crate) fn checkpoint(&self, shard: u32) -> Result<Option<Checkpoint>> {
        match self.meta.get(checkpoint_key(shard))? {
            None => Ok(None),
            Some(v) => Ok(Some(Checkpoint {
                pos: Pos { segment: read_u64(&v, 0)?, at: read_u64(&v, 8)?, len: 0 },
                next_lsn: read_u64(&v, 16)?,
            })),
        }
    }

    pub(crate) fn cursor(&self, stream: u64, consumer: &str) -> Result<Option<u64>> {
        self.cursors.get(cursor_key(stream, consumer))?.map(|v| read_u64(&v, 0)).transpose()
    }

    pub(crate) fn put_cursor(&self, stream: u64, consumer: &str, offset: u64) -> Result<()> {
        self.cursors.insert(cursor_key(stream, consumer), offset.to_le_bytes().to_vec())?;
        if self.sync == SyncMode::Always {
            self.db.persist(PersistMode::SyncData)?;
        }
        Ok(())
    }

    pub(crate) fn delete_cursor(&self, stream: u64, consumer: &str) -> Result<()> {
        self.cursors.remove(cursor_key(stream, consumer))?;
        if self.sync == SyncMode::Always {
            self.db.persist(PersistMode::SyncData)?;
        }
        Ok(())
    }

    /// All cursors of a stream: (consumer, offset).
    pub(crate) fn cursors_of(&self, stream: u64) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for g in self.cursors.prefix(be(stream)) {
            let (k, v) = g.into_inner()?;
            let name = k.get(8..).ok_or_else(|| Error::Index("bad cursor key".into()))?;
            out.push((String::from_utf8_lossy(name).into_owned(), read_u64(&v, 0)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_of_format_2_is_kept_and_marked_as_format_3() {
        let dir = tempfile::tempdir().unwrap();
        let pos = Pos { segment: 1, at: 32, len: 100 };
        {
            let index = Index::open(dir.path(), SyncMode::Always).unwrap();
            index.put_block(7, 0, &[pos]).unwrap();
            index.meta.insert(INDEX_FORMAT_KEY, 2u64.to_le_bytes().to_vec()).unwrap();
            index.commit_checkpoint(0, Some(&Checkpoint { pos, next_lsn: 5 }), &[]).unwrap();
        }
        let index = Index::open(dir.path(), SyncMode::Always).unwrap();
        assert_eq!(index.find_block(7, 0).unwrap(), Some((0, vec![pos])), "blocks kept");
        assert!(index.checkpoint(0).unwrap().is_some(), "so is the checkpoint: no re-index");
        assert_eq!(index.get_meta_u64(INDEX_FORMAT_KEY).unwrap(), Some(INDEX_FORMAT));
    }

    #[test]
    fn an_index_of_the_old_block_layout_is_dropped_for_a_re_index() {
        let dir = tempfile::tempdir().unwrap();
        let pos = Pos { segment: 1, at: 32, len: 100 };
        {
            let index = Index::open(dir.path(), SyncMode::Always).unwrap();
            // What an index written before the layout change holds: 20-byte positions, no
            // format key, and a checkpoint that vouches for the blocks.
            let mut old = Vec::new();
            old.extend_from_slice(&1u64.to_le_bytes());
            old.extend_from_slice(&32u64.to_le_bytes());
            old.extend_from_slice(&100u32.to_le_bytes());
            index.blocks.insert(block_key(7, 0), old).unwrap();
            index.meta.remove(INDEX_FORMAT_KEY).unwrap();
            let cp = Checkpoint { pos, next_lsn: 5 };
            index.commit_checkpoint(0, Some(&cp), &[]).unwrap();
            assert!(index.checkpoint(0).unwrap().is_some());
        }
        let index = Index::open(dir.path(), SyncMode::Always).unwrap();
        assert!(index.blocks.is_empty().unwrap(), "old blocks dropped");
        assert_eq!(index.checkpoint(0).unwrap(), None, "so recovery re-indexes the shard");
        assert_eq!(index.get_meta_u64(INDEX_FORMAT_KEY).unwrap(), Some(INDEX_FORMAT));
        // New blocks survive the next open.
        index.put_block(7, 0, &[pos]).unwrap();
        drop(index);
        let index = Index::open(dir.path(), SyncMode::Always).unwrap();
        assert_eq!(index.find_block(7, 0).unwrap(), Some((0, vec![pos])));
    }
}
