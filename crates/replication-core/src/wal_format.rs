//! The byte format of the replication runtime's write-ahead log (`bookstore_replication::wal`,
//! whose documentation describes the files and the guarantees built on them): file names,
//! the segment header, records, snapshot and meta files, their CRCs, and the scan that
//! verifies a segment and tells a torn tail from corruption.
//!
//! Pure functions over byte slices, so the format is defined and tested in one place
//! without a disk; the runtime reads and writes the files and turns a [`Damage`] into an
//! error naming the file. All integers are little-endian; CRC is CRC-32 (IEEE).

/// First 8 bytes of a segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"BKSTWAL1";
/// Segment header: magic, `u64` segment number.
pub const SEGMENT_HEADER_LEN: usize = 16;
/// Record header: `u32 len | u32 crc | u64 index`.
pub const RECORD_HEADER_LEN: usize = 16;
/// First 8 bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"BKSTSNP1";
/// Snapshot header: magic, `u64 index`, `u64 len`, `u32 crc`, `u32 0`.
pub const SNAPSHOT_HEADER_LEN: usize = 32;
/// First 8 bytes of the meta file.
pub const META_MAGIC: [u8; 8] = *b"BKSTMTA1";
/// Meta header: magic, `u32 len`, `u32 crc`.
pub const META_HEADER_LEN: usize = 16;
/// Name of the meta file.
pub const META_FILE: &str = "meta";
/// Suffix of a snapshot or meta file being written (renamed into place when complete).
pub const TMP_SUFFIX: &str = ".tmp";

/// Bytes of a file that fail verification: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: {reason}")]
pub struct Damage {
    pub offset: u64,
    pub reason: String,
}

impl Damage {
    fn new(offset: u64, reason: impl Into<String>) -> Self {
        Damage {
            offset,
            reason: reason.into(),
        }
    }
}

/// `<seq, 20 digits>.seg`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// The segment number of a file named by [`segment_name`].
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    parse_digits(digits)
}

/// `snap-<index, 20 digits>.snap`.
pub fn snapshot_name(index: u64) -> String {
    format!("snap-{index:020}.snap")
}

/// The index of a file named by [`snapshot_name`].
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    parse_digits(digits)
}

fn parse_digits(s: &str) -> Option<u64> {
    if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// The header a segment file starts with.
pub fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..].copy_from_slice(&seq.to_le_bytes());
    h
}

/// CRC of a record: covers `len`, `index` and the payload.
fn record_crc(len: u32, index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the record `u32 len | u32 crc | u64 index | payload` to `buf`.
///
/// # Panics
/// If the payload is 4 GiB or larger (callers bound it far lower).
pub fn encode_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("record payload under 4 GiB");
    buf.reserve(RECORD_HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&record_crc(len, index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Parses the record at `pos`: `(index, payload, end offset)`, or why it is invalid.
fn parse_record(data: &[u8], pos: usize) -> Result<(u64, &[u8], usize), String> {
    let rest = &data[pos..];
    if rest.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "incomplete record header ({} of {RECORD_HEADER_LEN} bytes)",
            rest.len()
        ));
    }
    let len = le_u32(&rest[0..4]);
    let stored_crc = le_u32(&rest[4..8]);
    let index = le_u64(&rest[8..16]);
    let available = rest.len() - RECORD_HEADER_LEN;
    if len as usize > available {
        return Err(format!(
            "record length {len} runs past the end of the file ({available} bytes left)"
        ));
    }
    let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize];
    let crc = record_crc(len, index, payload);
    if crc != stored_crc {
        return Err(format!(
            "CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
        ));
    }
    Ok((index, payload, pos + RECORD_HEADER_LEN + len as usize))
}

/// The first offset at or after `from` where a valid record with an index above
/// `prev_last` starts, if any (used to tell a torn tail from corruption).
fn find_valid_record(data: &[u8], from: usize, prev_last: Option<u64>) -> Option<usize> {
    (from..data.len().saturating_sub(RECORD_HEADER_LEN - 1)).find(|&q| {
        parse_record(data, q).is_ok_and(|(index, _, _)| prev_last.is_none_or(|p| index > p))
    })
}

/// What [`scan_segment`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SegmentScan {
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// Offset just past the last record visited.
    pub valid_len: u64,
    /// A torn tail (offset, reason); only with `tolerate_torn_tail`. An offset below
    /// [`SEGMENT_HEADER_LEN`] means the header itself is incomplete.
    pub torn: Option<(u64, String)>,
    /// Set when `visit` returned false: offset of that record.
    pub stopped_at: Option<u64>,
}

/// Verifies the bytes of segment `seq` and visits its records in order; `visit(index,
/// payload, offset)` returns false to stop early. Every index must exceed the previous
/// one (`prev_last` is the last index of the segments before).
///
/// With `tolerate_torn_tail` (the last segment), a bad or incomplete record with no valid
/// record after it ends the scan as a torn tail, as does a bad header with nothing after
/// it (a crash while creating the segment); any other bad byte is [`Damage`].
pub fn scan_segment(
    seq: u64,
    data: &[u8],
    tolerate_torn_tail: bool,
    mut prev_last: Option<u64>,
    mut visit: impl FnMut(u64, &[u8], u64) -> bool,
) -> Result<SegmentScan, Damage> {
    let mut scan = SegmentScan::default();
    if data.len() < SEGMENT_HEADER_LEN || data[..8] != SEGMENT_MAGIC {
        let reason = if data.len() < SEGMENT_HEADER_LEN {
            format!("incomplete segment header ({} bytes)", data.len())
        } else {
            "bad segment magic".to_string()
        };
        // A segment is created by writing and syncing its header before any record, so a
        // bad header with nothing after it is a crash during creation.
        if tolerate_torn_tail && data.len() <= SEGMENT_HEADER_LEN {
            scan.torn = Some((0, reason));
            return Ok(scan);
        }
        return Err(Damage::new(0, reason));
    }
    let stored_seq = le_u64(&data[8..16]);
    if stored_seq != seq {
        return Err(Damage::new(
            8,
            format!("header says segment {stored_seq}, file name says {seq}"),
        ));
    }
    let mut pos = SEGMENT_HEADER_LEN;
    while pos < data.len() {
        let reason = match parse_record(data, pos) {
            Ok((index, payload, end)) => {
                if let Some(prev) = prev_last.filter(|&prev| index <= prev) {
                    return Err(Damage::new(
                        pos as u64,
                        format!("record index {index} does not follow index {prev}"),
                    ));
                }
                if !visit(index, payload, pos as u64) {
                    scan.stopped_at = Some(pos as u64);
                    scan.valid_len = pos as u64;
                    return Ok(scan);
                }
                scan.first_index.get_or_insert(index);
                scan.last_index = Some(index);
                prev_last = Some(index);
                pos = end;
                continue;
            }
            Err(reason) => reason,
        };
        if !tolerate_torn_tail {
            return Err(Damage::new(pos as u64, reason));
        }
        if let Some(next) = find_valid_record(data, pos + 1, prev_last) {
            return Err(Damage::new(
                pos as u64,
                format!(
                    "{reason}; a valid record follows at offset {next}, so this is not a torn tail"
                ),
            ));
        }
        scan.torn = Some((pos as u64, reason));
        break;
    }
    scan.valid_len = pos as u64;
    Ok(scan)
}

/// CRC of a snapshot: covers `index`, `len` (as `u64`) and the data.
fn snapshot_crc(index: u64, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(&(data.len() as u64).to_le_bytes());
    h.update(data);
    h.finalize()
}

/// The header of a snapshot file: `magic | u64 index | u64 len | u32 crc | u32 0`; the
/// data follows it.
pub fn snapshot_header(index: u64, data: &[u8]) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut header = [0u8; SNAPSHOT_HEADER_LEN];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&index.to_le_bytes());
    header[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&snapshot_crc(index, data).to_le_bytes());
    header
}

/// Verifies the bytes of the snapshot file for `index` and returns its data.
pub fn decode_snapshot(index: u64, file: &[u8]) -> Result<&[u8], Damage> {
    if file.len() < SNAPSHOT_HEADER_LEN || file[..8] != SNAPSHOT_MAGIC {
        return Err(Damage::new(0, "bad or incomplete snapshot header"));
    }
    let stored_index = le_u64(&file[8..16]);
    let len = le_u64(&file[16..24]);
    let stored_crc = le_u32(&file[24..28]);
    if stored_index != index {
        return Err(Damage::new(
            8,
            format!("header says index {stored_index}, file name says {index}"),
        ));
    }
    let body = &file[SNAPSHOT_HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(Damage::new(
            16,
            format!("snapshot length {len} but {} bytes present", body.len()),
        ));
    }
    let crc = snapshot_crc(index, body);
    if crc != stored_crc {
        return Err(Damage::new(
            24,
            format!("snapshot CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"),
        ));
    }
    Ok(body)
}

/// CRC of the meta value: covers `len` (as `u32`) and the data.
fn meta_crc(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(data.len() as u32).to_le_bytes());
    h.update(data);
    h.finalize()
}

/// The header of the meta file, `magic | u32 len | u32 crc`, the data following it; `None`
/// if the data does not fit a `u32` length.
pub fn meta_header(data: &[u8]) -> Option<[u8; META_HEADER_LEN]> {
    let len = u32::try_from(data.len()).ok()?;
    let mut header = [0u8; META_HEADER_LEN];
    header[..8].copy_from_slice(&META_MAGIC);
    header[8..12].copy_from_slice(&len.to_le_bytes());
    header[12..16].copy_from_slice(&meta_crc(data).to_le_bytes());
    Some(header)
}

/// Verifies the bytes of the meta file and returns the value.
pub fn decode_meta(file: &[u8]) -> Result<&[u8], Damage> {
    if file.len() < META_HEADER_LEN || file[..8] != META_MAGIC {
        return Err(Damage::new(0, "bad or incomplete meta header"));
    }
    let len = le_u32(&file[8..12]) as usize;
    let stored_crc = le_u32(&file[12..16]);
    let body = &file[META_HEADER_LEN..];
    if body.len() != len {
        return Err(Damage::new(
            8,
            format!("meta length {len} but {} bytes present", body.len()),
        ));
    }
    let crc = meta_crc(body);
    if crc != stored_crc {
        return Err(Damage::new(
            12,
            format!("meta CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(data: &[u8], seq: u64, torn_ok: bool) -> Result<(SegmentScan, Vec<u64>), Damage> {
        let mut seen = Vec::new();
        let scan = scan_segment(seq, data, torn_ok, None, |i, _, _| {
            seen.push(i);
            true
        })?;
        Ok((scan, seen))
    }

    #[test]
    fn record_encoding_round_trips() {
        let mut buf = segment_header(7).to_vec();
        encode_record(&mut buf, 42, b"hello");
        encode_record(&mut buf, 43, b"");
        let mut seen = Vec::new();
        let scan = scan_segment(7, &buf, false, None, |i, p, off| {
            seen.push((i, p.to_vec(), off));
            true
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(42, b"hello".to_vec(), 16), (43, Vec::new(), 16 + 16 + 5)]
        );
        assert_eq!(scan.valid_len, buf.len() as u64);
        assert_eq!((scan.first_index, scan.last_index), (Some(42), Some(43)));
    }

    /// Bytes written by the first version of the format (the WAL before it was split into
    /// modules); any change here breaks every existing data directory.
    #[test]
    fn encodings_match_the_bytes_on_disk() {
        let mut seg = segment_header(8).to_vec();
        encode_record(&mut seg, 57, b"");
        encode_record(&mut seg, 58, b"x");
        #[rustfmt::skip]
        let expect: &[u8] = &[
            b'B', b'K', b'S', b'T', b'W', b'A', b'L', b'1', 8, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0x39, 0x8e, 0x57, 0xe1, 57, 0, 0, 0, 0, 0, 0, 0,
            1, 0, 0, 0, 0x45, 0x2c, 0x23, 0x37, 58, 0, 0, 0, 0, 0, 0, 0, b'x',
        ];
        assert_eq!(seg, expect);

        let snapshot = snapshot_header(20, b"state@20");
        #[rustfmt::skip]
        let expect: [u8; SNAPSHOT_HEADER_LEN] = [
            b'B', b'K', b'S', b'T', b'S', b'N', b'P', b'1', 20, 0, 0, 0, 0, 0, 0, 0,
            8, 0, 0, 0, 0, 0, 0, 0, 0x9a, 0xa2, 0x76, 0x84, 0, 0, 0, 0,
        ];
        assert_eq!(snapshot, expect);

        let meta = meta_header(b"epoch=3").unwrap();
        #[rustfmt::skip]
        let expect: [u8; META_HEADER_LEN] = [
            b'B', b'K', b'S', b'T', b'M', b'T', b'A', b'1', 7, 0, 0, 0, 0xad, 0xc1, 0x1d, 0x31,
        ];
        assert_eq!(meta, expect);
    }

    #[test]
    fn snapshot_and_meta_round_trip_and_detect_damage() {
        let mut file = snapshot_header(9, b"data").to_vec();
        file.extend_from_slice(b"data");
        assert_eq!(decode_snapshot(9, &file), Ok(&b"data"[..]));
        assert_eq!(decode_snapshot(8, &file).unwrap_err().offset, 8);
        assert_eq!(decode_snapshot(9, &file[..35]).unwrap_err().offset, 16);
        assert_eq!(decode_snapshot(9, &file[..20]).unwrap_err().offset, 0);
        let mut bad = file.clone();
        bad[33] ^= 1;
        assert_eq!(decode_snapshot(9, &bad).unwrap_err().offset, 24);

        let mut file = meta_header(b"m").unwrap().to_vec();
        file.push(b'm');
        assert_eq!(decode_meta(&file), Ok(&b"m"[..]));
        assert_eq!(decode_meta(&file[..16]).unwrap_err().offset, 8);
        file[16] = b'n';
        assert_eq!(decode_meta(&file).unwrap_err().offset, 12);
        assert_eq!(decode_meta(b"BKSTMTA1").unwrap_err().offset, 0);
    }

    #[test]
    fn torn_tail_vs_corruption() {
        let mut buf = segment_header(1).to_vec();
        encode_record(&mut buf, 1, b"aaaa");
        let second = buf.len();
        encode_record(&mut buf, 2, b"bbbb");
        encode_record(&mut buf, 3, b"cccc");
        // Torn: cut in the middle of the last record.
        let torn = &buf[..buf.len() - 2];
        let (scan, _) = scan_all(torn, 1, true).unwrap();
        assert_eq!(scan.last_index, Some(2));
        assert!(scan.torn.is_some());
        // Not tolerated outside the last segment.
        assert_eq!(scan_all(torn, 1, false).unwrap_err().offset, 16 + 2 * 20);
        // Corrupt: flip a payload byte of record 2, record 3 is still valid.
        let mut bad = buf.clone();
        bad[second + RECORD_HEADER_LEN] ^= 0xff;
        let err = scan_all(&bad, 1, true).unwrap_err();
        assert_eq!(err.offset, second as u64);
        assert!(err.reason.contains("not a torn tail"), "{err}");
    }

    #[test]
    fn headers_and_order_are_checked() {
        // A half-written header is a torn tail of the last segment, and damage elsewhere.
        let (scan, _) = scan_all(b"BKST", 3, true).unwrap();
        assert_eq!(scan.torn.map(|t| t.0), Some(0));
        assert_eq!(scan_all(b"BKST", 3, false).unwrap_err().offset, 0);
        // The number in the header must match the file name's.
        assert_eq!(scan_all(&segment_header(4), 3, true).unwrap_err().offset, 8);
        // Indices strictly increase, within a segment and across (`prev_last`).
        let mut buf = segment_header(1).to_vec();
        encode_record(&mut buf, 5, b"a");
        encode_record(&mut buf, 5, b"b");
        assert_eq!(scan_all(&buf, 1, true).unwrap_err().offset, 33);
        let err = scan_segment(1, &buf, true, Some(5), |_, _, _| true).unwrap_err();
        assert_eq!(err.offset, 16);
        // Stopping early reports where.
        let scan = scan_segment(1, &buf[..33], false, None, |_, _, _| false).unwrap();
        assert_eq!((scan.stopped_at, scan.valid_len), (Some(16), 16));
    }

    #[test]
    fn names_parse() {
        assert_eq!(segment_name(12), "00000000000000000012.seg");
        assert_eq!(parse_segment_name(&segment_name(12)), Some(12));
        assert_eq!(parse_snapshot_name(&snapshot_name(99)), Some(99));
        assert_eq!(parse_segment_name("12.seg"), None);
        assert_eq!(parse_snapshot_name("snap-x.snap"), None);
    }
}
