//! Snapshots.
//! - [`save`]: streamed from etcd into a temporary file next to the target
//!   under an overall deadline ([`SAVE_TIMEOUT`]), checked with
//!   [`verify_file`] (etcd appends the SHA-256 of the database to the
//!   stream), made 0600, fsynced and renamed into place; a failed or timed
//!   out save leaves nothing. The directory must exist: callers create it
//!   (0700).
//! - [`verify_file`]: the offline check of a snapshot file (or of a copied
//!   `member/snap/db`) before anything trusts it.
//! - Scheduled snapshots are named `etcd-<UTC yyyymmddThhmmssZ>.db`
//!   ([`scheduled_name`]), listed by the time in their name
//!   ([`list_scheduled`]) and pruned by count and age ([`prune`]).

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{EtcdConfig, EtcdError};

/// A snapshot cannot be saved, or a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// etcd cannot be reached or its Snapshot call failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The snapshot cannot be written, synced or renamed into place.
    #[error("cannot write the snapshot {path}")]
    Write {
        /// The target file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// etcd's snapshot stream did not end before the deadline of [`save`].
    #[error(
        "the snapshot from etcd did not complete within {timeout:?}; nothing was saved, try again"
    )]
    TimedOut {
        /// The deadline.
        timeout: Duration,
    },
    /// What etcd streamed fails [`verify_file`] or has no trailing hash.
    #[error("the snapshot from etcd is corrupt ({why}); nothing was saved, try again")]
    Corrupt {
        /// What the check found.
        why: String,
    },
    /// The file cannot be opened or read, is not a regular file, or
    /// changed while it was read.
    #[error("cannot read the snapshot file {path}")]
    Unreadable {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is shorter than a bbolt header and meta page (80 bytes).
    #[error("{path} is not an etcd snapshot: it is {bytes} bytes long, too short for a bolt database (empty, or cut off at the start of a copy)")]
    TooShort {
        /// The snapshot file.
        path: PathBuf,
        /// Its size in bytes.
        bytes: u64,
    },
    /// No bbolt magic or version, an implausible page size, or no meta
    /// page whose checksum holds.
    #[error("{path} is not an etcd snapshot: {why}")]
    NotBolt {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong, e.g. the magic number found.
        why: String,
    },
    /// The size is not what a whole database (plus etcd's hash) has.
    #[error("{path} is truncated or corrupt: {why}; it cannot be restored, use another snapshot")]
    Truncated {
        /// The snapshot file.
        path: PathBuf,
        /// Its size in bytes.
        bytes: u64,
        /// Which size rule fails.
        why: String,
    },
    /// The trailing SHA-256 does not match the database before it.
    #[error("{path} has the wrong checksum: its trailing SHA-256 is {expected} but its database hashes to {actual}; the file is corrupt, use another snapshot")]
    WrongChecksum {
        /// The snapshot file.
        path: PathBuf,
        /// The trailing 32 bytes, hex.
        expected: String,
        /// SHA-256 of the bytes before them, hex.
        actual: String,
    },
}

impl SnapshotError {
    /// True when the snapshot file is unusable and trying again with the
    /// same file cannot help (`selfnode` exits 2): [`SnapshotError::Unreadable`],
    /// [`SnapshotError::TooShort`], [`SnapshotError::NotBolt`],
    /// [`SnapshotError::Truncated`] and [`SnapshotError::WrongChecksum`];
    /// [`SnapshotError::Etcd`] as [`EtcdError::is_invalid_input`] says.
    /// A failed write, a stream that timed out or a corrupt stream from
    /// etcd is not: a new save may succeed.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            SnapshotError::Etcd(e) => e.is_invalid_input(),
            SnapshotError::Unreadable { .. }
            | SnapshotError::TooShort { .. }
            | SnapshotError::NotBolt { .. }
            | SnapshotError::Truncated { .. }
            | SnapshotError::WrongChecksum { .. } => true,
            SnapshotError::Write { .. }
            | SnapshotError::TimedOut { .. }
            | SnapshotError::Corrupt { .. } => false,
        }
    }
}

/// What [`save`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotInfo {
    /// The snapshot file (the `path` given to [`save`]).
    pub path: PathBuf,
    /// Its size in bytes, etcd's trailing SHA-256 included.
    pub bytes: u64,
    /// SHA-256 of the whole file.
    pub sha256: String,
}

/// What [`verify_file`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileCheck {
    /// Size of the file.
    pub bytes: u64,
    /// The file ends with etcd's SHA-256 of the database (a snapshot from
    /// etcd's Snapshot call, `etcdctl snapshot save` or [`save`]); a plain
    /// copy of `member/snap/db` has none.
    pub has_hash: bool,
    /// SHA-256 of the whole file, as `sha256sum` prints it.
    pub sha256: String,
}

/// How long [`save`] lets etcd stream a snapshot: at a slow 20 MB/s,
/// etcd's largest supported database (8 GiB) takes about 7 minutes.
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Streams a snapshot from etcd into `path` (see the module doc) within
/// [`SAVE_TIMEOUT`]. The parent directory must exist; it is not created.
pub async fn save(cfg: &EtcdConfig, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    save_within(cfg, path, SAVE_TIMEOUT).await
}

/// [`save`] with another deadline for the whole stream. Connecting and
/// etcd's first answer are bounded by [`EtcdConfig::timeout`] as every
/// call; `deadline` bounds the stream as a whole. On any failure,
/// timeouts included, the partial file is removed.
pub async fn save_within(
    cfg: &EtcdConfig,
    path: &Path,
    deadline: Duration,
) -> Result<SnapshotInfo, SnapshotError> {
    let write_err = |source| SnapshotError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| write_err(std::io::Error::other("not a file name")))?;
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Created before the deadline starts, so that no file operation is
    // still under way when a timeout removes the partial file.
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .await
        .map_err(write_err)?;
    let streamed = match tokio::time::timeout(deadline, stream_to(cfg, file, path)).await {
        Ok(streamed) => streamed,
        Err(_) => Err(SnapshotError::TimedOut { timeout: deadline }),
    };
    let result = match streamed {
        Ok(()) => finish(&tmp, path, dir).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// etcd's snapshot stream into `file`, synced.
async fn stream_to(
    cfg: &EtcdConfig,
    mut file: tokio::fs::File,
    path: &Path,
) -> Result<(), SnapshotError> {
    let write_err = |source| SnapshotError::Write {
        path: path.to_path_buf(),
        source,
    };
    let rpc = |source| EtcdError::Rpc {
        op: "snapshot",
        source,
    };
    let mut client = crate::connect(cfg, &cfg.endpoints).await?;
    let mut stream = crate::within(cfg, "snapshot", &cfg.endpoints, client.snapshot()).await?;
    while let Some(msg) = stream.message().await.map_err(rpc)? {
        file.write_all(msg.blob()).await.map_err(write_err)?;
    }
    file.sync_all().await.map_err(write_err)?;
    Ok(())
}

/// Checks the streamed file `tmp` and renames it into place at `path`.
async fn finish(tmp: &Path, path: &Path, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let write_err = |source| SnapshotError::Write {
        path: path.to_path_buf(),
        source,
    };
    let check = {
        let tmp = tmp.to_path_buf();
        tokio::task::spawn_blocking(move || verify_file(&tmp))
            .await
            .map_err(|e| write_err(std::io::Error::other(e)))?
    };
    let check = match check {
        Ok(c) if c.has_hash => c,
        Ok(_) => {
            return Err(SnapshotError::Corrupt {
                why: "etcd sent no trailing SHA-256".into(),
            })
        }
        Err(e) => {
            return Err(SnapshotError::Corrupt {
                why: crate::chain(&e),
            })
        }
    };
    tokio::fs::rename(tmp, path).await.map_err(write_err)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    Ok(SnapshotInfo {
        path: path.to_path_buf(),
        bytes: check.bytes,
        sha256: check.sha256,
    })
}

/// bbolt's magic number, in each meta page right after the page header.
const BOLT_MAGIC: u32 = 0xED0C_DAED;
/// The only bbolt data format version.
const BOLT_VERSION: u32 = 2;
/// bbolt's page header (id u64, flags u16, count u16, overflow u32).
const PAGE_HEADER: u64 = 16;
/// bbolt's meta: magic, version, page size, flags (u32 each), root bucket
/// (16), freelist, pgid, txid (u64 each) and the checksum (u64) of the 56
/// bytes before it.
const META_LEN: usize = 64;
/// etcd's trailing SHA-256.
const HASH_LEN: u64 = 32;
/// etcdutl's rule: size % 512 is 32 with the hash, 0 without.
const SECTOR: u64 = 512;

struct Meta {
    page_size: u64,
    pgid: u64,
    txid: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// FNV-1a, 64 bits (Go's `hash/fnv` New64a), bbolt's meta checksum.
fn fnv64a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A meta page whose checksum holds.
fn valid_meta(b: &[u8; META_LEN]) -> Option<Meta> {
    let ok = u32_at(b, 0) == BOLT_MAGIC
        && u32_at(b, 4) == BOLT_VERSION
        && fnv64a(&b[..56]) == u64_at(b, 56);
    ok.then(|| Meta {
        page_size: u64::from(u32_at(b, 8)),
        pgid: u64_at(b, 40),
        txid: u64_at(b, 48),
    })
}

/// Checks a snapshot file without trusting it: readable; long enough; a
/// bbolt database (magic 0xED0CDAED and version 2 in meta page 0, a
/// plausible page size, a meta page whose checksum holds); of a size
/// etcd accepts (with etcd's trailing SHA-256 the size is 32 more than a
/// multiple of 512, without it a multiple of 512) and holding every page
/// its meta page counts; and, when the trailing SHA-256 is there, matching
/// it. A file without the hash (a copied `member/snap/db`) is accepted with
/// `has_hash: false`; restoring it needs etcdutl's `--skip-hash-check`.
pub fn verify_file(path: &Path) -> Result<FileCheck, SnapshotError> {
    let unreadable = |source| SnapshotError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let not_bolt = |why: String| SnapshotError::NotBolt {
        path: path.to_path_buf(),
        why,
    };
    let file = File::open(path).map_err(unreadable)?;
    let md = file.metadata().map_err(unreadable)?;
    if !md.is_file() {
        return Err(unreadable(std::io::Error::other("not a regular file")));
    }
    let bytes = md.len();
    let truncated = |why: String| SnapshotError::Truncated {
        path: path.to_path_buf(),
        bytes,
        why,
    };
    if bytes < PAGE_HEADER + META_LEN as u64 {
        return Err(SnapshotError::TooShort {
            path: path.to_path_buf(),
            bytes,
        });
    }
    let mut meta0 = [0u8; META_LEN];
    file.read_exact_at(&mut meta0, PAGE_HEADER)
        .map_err(unreadable)?;
    let magic = u32_at(&meta0, 0);
    if magic != BOLT_MAGIC {
        return Err(not_bolt(format!(
            "no bolt database header (found {magic:#010x} at byte 16 where bbolt writes {BOLT_MAGIC:#010x})"
        )));
    }
    let version = u32_at(&meta0, 4);
    if version != BOLT_VERSION {
        return Err(not_bolt(format!(
            "bolt format version {version}, expected {BOLT_VERSION}"
        )));
    }
    let page_size = u64::from(u32_at(&meta0, 8));
    if !(SECTOR..=1 << 20).contains(&page_size) || page_size % SECTOR != 0 {
        return Err(not_bolt(format!("implausible bolt page size {page_size}")));
    }
    let has_hash = match bytes % SECTOR {
        0 => false,
        HASH_LEN => true,
        _ => {
            return Err(truncated(format!(
                "{bytes} bytes is neither a whole database (a multiple of {SECTOR} bytes) nor one followed by etcd's {HASH_LEN}-byte SHA-256"
            )))
        }
    };
    let db_len = if has_hash { bytes - HASH_LEN } else { bytes };
    // A bolt database has at least two meta pages, the freelist and the
    // root bucket, and is a whole number of pages.
    if db_len < 4 * page_size || db_len % page_size != 0 {
        return Err(truncated(format!(
            "its database is {db_len} bytes, not a whole number (at least 4) of {page_size}-byte pages"
        )));
    }

    // Hash the whole file and, when there is one, the part the trailing
    // hash covers.
    let mut whole = Sha256::new();
    let mut db = Sha256::new();
    let mut trailer = Vec::with_capacity(HASH_LEN as usize);
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        whole.update(chunk);
        let in_db = db_len.saturating_sub(pos).min(n as u64) as usize;
        db.update(&chunk[..in_db]);
        trailer.extend_from_slice(&chunk[in_db..]);
        pos += n as u64;
    }
    if pos != bytes {
        return Err(unreadable(std::io::Error::other(format!(
            "the file changed while it was read ({bytes} bytes, then {pos})"
        ))));
    }
    if has_hash {
        let actual = db.finalize();
        if actual.as_slice() != trailer.as_slice() {
            return Err(SnapshotError::WrongChecksum {
                path: path.to_path_buf(),
                expected: hex::encode(&trailer),
                actual: hex::encode(actual),
            });
        }
    }

    // bbolt opens the valid meta page with the highest transaction id;
    // that page counts the pages the database needs.
    let mut meta1 = [0u8; META_LEN];
    file.read_exact_at(&mut meta1, page_size + PAGE_HEADER)
        .map_err(unreadable)?;
    let meta = match (valid_meta(&meta0), valid_meta(&meta1)) {
        (Some(a), Some(b)) => {
            if a.txid >= b.txid {
                a
            } else {
                b
            }
        }
        (Some(m), None) | (None, Some(m)) => m,
        (None, None) => return Err(not_bolt("both bolt meta pages fail their checksums".into())),
    };
    let needed = meta.pgid.saturating_mul(meta.page_size);
    if meta.page_size != page_size || needed > db_len {
        return Err(truncated(format!(
            "its database needs {} pages of {} bytes ({needed} bytes) but holds {db_len} bytes",
            meta.pgid, meta.page_size
        )));
    }
    Ok(FileCheck {
        bytes,
        has_hash,
        sha256: hex::encode(whole.finalize()),
    })
}

// ---- scheduled snapshots -----------------------------------------------------

const PREFIX: &str = "etcd-";
const SUFFIX: &str = ".db";

/// `etcd-<UTC yyyymmddThhmmssZ>.db`, e.g. `etcd-20261125T134000Z.db`.
/// Times before 1970 are written as 1970-01-01T00:00:00Z.
pub fn scheduled_name(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{PREFIX}{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z{SUFFIX}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The time in a scheduled snapshot's name; `None` for any other name.
fn parse_scheduled(name: &str) -> Option<SystemTime> {
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.as_bytes();
    if stamp.len() != 16 || stamp[8] != b'T' || stamp[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = &stamp[r];
        s.iter()
            .all(u8::is_ascii_digit)
            .then(|| s.iter().fold(0u64, |n, c| n * 10 + u64::from(c - b'0')))
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = u64::try_from(days_from_civil(y as i64, mo as u32, d as u32)).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + s))
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's algorithms (proleptic Gregorian calendar, days since
// 1970-01-01).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The scheduled snapshots in `dir` (regular files named by
/// [`scheduled_name`]; temporary `.…partial-…` files and anything else are
/// ignored), oldest first, with the time in their names. A missing
/// directory holds none.
pub fn list_scheduled(dir: &Path) -> std::io::Result<Vec<(PathBuf, SystemTime)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(at) = name.to_str().and_then(parse_scheduled) else {
            continue;
        };
        if entry.file_type()?.is_file() {
            out.push((entry.path(), at));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Deletes the scheduled snapshots in `dir` beyond the newest `keep` and
/// those older than `max_age` at `now`, but never the newest one. Returns
/// what it deleted, oldest first.
pub fn prune(
    dir: &Path,
    keep: usize,
    max_age: Duration,
    now: SystemTime,
) -> std::io::Result<Vec<PathBuf>> {
    let all = list_scheduled(dir)?;
    let n = all.len();
    let mut removed = Vec::new();
    for (i, (path, at)) in all.into_iter().enumerate() {
        let newer = n - 1 - i;
        if newer == 0 {
            break;
        }
        let too_old = now.duration_since(at).is_ok_and(|age| age > max_age);
        if newer >= keep || too_old {
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if !removed.is_empty() {
        File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PS: usize = 4096;

    /// A bolt file as bbolt's `Tx.WriteTo` lays it out: `pages` pages, two
    /// meta pages (the second with a lower txid) counting all of them.
    fn bolt(pages: usize) -> Vec<u8> {
        let mut f = vec![0u8; pages * PS];
        for (page, txid) in [(0usize, 7u64), (1, 6)] {
            let at = page * PS;
            f[at..at + 8].copy_from_slice(&(page as u64).to_le_bytes());
            f[at + 8..at + 10].copy_from_slice(&4u16.to_le_bytes()); // meta flag
            let m = at + 16;
            f[m..m + 4].copy_from_slice(&BOLT_MAGIC.to_le_bytes());
            f[m + 4..m + 8].copy_from_slice(&BOLT_VERSION.to_le_bytes());
            f[m + 8..m + 12].copy_from_slice(&(PS as u32).to_le_bytes());
            f[m + 16..m + 24].copy_from_slice(&3u64.to_le_bytes()); // root
            f[m + 32..m + 40].copy_from_slice(&2u64.to_le_bytes()); // freelist
            f[m + 40..m + 48].copy_from_slice(&(pages as u64).to_le_bytes());
            f[m + 48..m + 56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&f[m..m + 56]);
            f[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
        }
        // Some content in the data pages.
        for (i, b) in f[4 * PS..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        f
    }

    fn with_hash(mut db: Vec<u8>) -> Vec<u8> {
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        db
    }

    fn check(bytes: &[u8]) -> Result<FileCheck, SnapshotError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("snap.db");
        std::fs::write(&p, bytes).unwrap();
        let r = verify_file(&p);
        if let Err(e) = &r {
            assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
        r
    }

    #[test]
    fn fnv64a_matches_go() {
        // Go: fnv.New64a() over "" and "a".
        assert_eq!(fnv64a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64a(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn good_files_with_and_without_the_hash() {
        let db = bolt(6);
        let c = check(&with_hash(db.clone())).unwrap();
        assert!(c.has_hash);
        assert_eq!(c.bytes, 6 * PS as u64 + 32);
        assert_eq!(c.sha256, hex::encode(Sha256::digest(with_hash(db.clone()))));
        let c = check(&db).unwrap();
        assert!(!c.has_hash);
        assert_eq!(c.bytes, 6 * PS as u64);
        // A copied live database is often longer than its pages need.
        let mut grown = db.clone();
        grown.resize(10 * PS, 0);
        assert!(!check(&grown).unwrap().has_hash);
        // One torn meta page: bbolt falls back to the other.
        let mut torn = db;
        torn[16 + 40] ^= 1;
        check(&torn).unwrap();
    }

    #[test]
    fn missing_and_short_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.db");
        let e = verify_file(&missing).unwrap_err();
        assert!(matches!(e, SnapshotError::Unreadable { .. }), "{e}");
        assert!(e.to_string().contains("nope.db"), "{e}");
        let e = verify_file(dir.path()).unwrap_err();
        assert!(matches!(e, SnapshotError::Unreadable { .. }), "{e}");
        let e = check(b"").unwrap_err();
        assert!(matches!(e, SnapshotError::TooShort { bytes: 0, .. }), "{e}");
        let e = check(&bolt(4)[..40]).unwrap_err();
        assert!(
            matches!(e, SnapshotError::TooShort { bytes: 40, .. }),
            "{e}"
        );
    }

    #[test]
    fn not_bolt() {
        let e = check(&[0x5a; 8192]).unwrap_err();
        assert!(matches!(e, SnapshotError::NotBolt { .. }), "{e}");
        assert!(e.to_string().contains("no bolt database header"), "{e}");
        let mut v1 = bolt(4);
        v1[20] = 1;
        let e = check(&v1).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e}");
        let mut both_bad = bolt(4);
        both_bad[16 + 56] ^= 1;
        both_bad[PS + 16 + 56] ^= 1;
        let e = check(&both_bad).unwrap_err();
        assert!(e.to_string().contains("checksums"), "{e}");
    }

    #[test]
    fn truncated() {
        let full = with_hash(bolt(8));
        let e = check(&full[..full.len() - 100]).unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("neither a whole database"), "{e}");
        // Cut at a page boundary: the size looks like a plain copy, but
        // the meta page counts 8 pages.
        let e = check(&full[..6 * PS]).unwrap_err();
        assert!(e.to_string().contains("needs 8 pages"), "{e}");
        let e = check(&full[..2 * PS]).unwrap_err();
        assert!(e.to_string().contains("at least 4"), "{e}");
    }

    #[test]
    fn wrong_checksum() {
        let mut f = with_hash(bolt(8));
        let mid = f.len() / 2;
        f[mid] ^= 0xff;
        let e = check(&f).unwrap_err();
        assert!(matches!(e, SnapshotError::WrongChecksum { .. }), "{e}");
        assert!(e.to_string().contains("wrong checksum"), "{e}");
    }

    fn at(s: &str) -> SystemTime {
        parse_scheduled(s).unwrap_or_else(|| panic!("{s} does not parse"))
    }

    #[test]
    fn scheduled_names_are_utc_and_round_trip() {
        assert_eq!(scheduled_name(UNIX_EPOCH), "etcd-19700101T000000Z.db");
        // `date -u -d @1764078000`
        let t = UNIX_EPOCH + Duration::from_secs(1_764_078_000);
        assert_eq!(scheduled_name(t), "etcd-20251125T134000Z.db");
        let leap = UNIX_EPOCH + Duration::from_secs(951_868_799);
        assert_eq!(scheduled_name(leap), "etcd-20000229T235959Z.db");
        let sub = t + Duration::from_millis(999);
        assert_eq!(scheduled_name(sub), "etcd-20251125T134000Z.db");
        for secs in [
            0u64,
            951_868_799,
            1_764_078_000,
            4_102_444_800,
            253_402_300_799,
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(at(&scheduled_name(t)), t);
        }
        for bad in [
            "etcd-20251125T134000Z.db.partial-12",
            ".etcd-20251125T134000Z.db.partial-12",
            "etcd-20251125T134000.db",
            "etcd-20251325T134000Z.db",
            "etcd-20250230T134000Z.db",
            "etcd-20251125T244000Z.db",
            "etcd-2025112xT134000Z.db",
            "etcd-20251125t134000Z.db",
            "snap-20251125T134000Z.db",
        ] {
            assert_eq!(parse_scheduled(bad), None, "{bad}");
        }
    }

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"x").unwrap();
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn listing_ignores_other_files_and_sorts_by_time() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_scheduled(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
        touch(dir.path(), "etcd-20251125T134000Z.db");
        touch(dir.path(), "etcd-20241231T235959Z.db");
        touch(dir.path(), "etcd-20251201T000000Z.db");
        touch(dir.path(), ".etcd-20251202T000000Z.db.partial-42");
        touch(dir.path(), "manual.db");
        std::fs::create_dir(dir.path().join("etcd-20251203T000000Z.db")).unwrap();
        let l = list_scheduled(dir.path()).unwrap();
        let paths: Vec<PathBuf> = l.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            names(&paths),
            [
                "etcd-20241231T235959Z.db",
                "etcd-20251125T134000Z.db",
                "etcd-20251201T000000Z.db"
            ]
        );
        assert_eq!(l[1].1, at("etcd-20251125T134000Z.db"));
    }

    #[test]
    fn prune_by_count_and_age_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for n in [
            "etcd-20251101T000000Z.db",
            "etcd-20251120T000000Z.db",
            "etcd-20251124T000000Z.db",
            "etcd-20251125T000000Z.db",
            "etcd-20251125T120000Z.db",
        ] {
            touch(d, n);
        }
        touch(d, ".etcd-20250101T000000Z.db.partial-7");
        touch(d, "keep-me.db");
        let now = at("etcd-20251125T130000Z.db");
        let day = Duration::from_secs(86_400);

        // Nothing to do.
        assert!(prune(d, 10, 365 * day, now).unwrap().is_empty());
        // By count: the newest 3 stay.
        let gone = prune(d, 3, 365 * day, now).unwrap();
        assert_eq!(
            names(&gone),
            ["etcd-20251101T000000Z.db", "etcd-20251120T000000Z.db"]
        );
        // By age: older than 1 day at `now` (the 24th, 00:00, is 37 h old).
        let gone = prune(d, 10, day, now).unwrap();
        assert_eq!(names(&gone), ["etcd-20251124T000000Z.db"]);
        // Everything is too old, and keep 0: the newest one still stays.
        let later = now + 30 * day;
        let gone = prune(d, 0, day, later).unwrap();
        assert_eq!(names(&gone), ["etcd-20251125T000000Z.db"]);
        let left: Vec<PathBuf> = list_scheduled(d)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(names(&left), ["etcd-20251125T120000Z.db"]);
        assert!(d.join(".etcd-20250101T000000Z.db.partial-7").exists());
        assert!(d.join("keep-me.db").exists());
        // A missing directory: nothing to prune.
        assert!(prune(&d.join("missing"), 1, day, now).unwrap().is_empty());
    }
}
