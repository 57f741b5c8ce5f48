//! The written-but-not-synced bytes of one file.
//!
//! This is what a page cache holds that the disk does not: readers must see it, `fsync` moves
//! it to the backing file, and a power cut throws it away. Extents never overlap and never
//! touch (touching ones are merged), so a file appended to in small writes, as a write-ahead
//! log is, stays one growing buffer rather than thousands of pieces.

use std::collections::BTreeMap;

/// Dirty extents of one file, keyed by their offset.
#[derive(Debug, Default)]
pub struct Dirty {
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
}

/// Why a write cannot be cached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("write of {len} bytes at offset {offset} passes the largest file offset")]
pub struct OffsetOverflow {
    /// Where the write started.
    pub offset: u64,
    /// Its length.
    pub len: usize,
}

impl Dirty {
    /// True if nothing is waiting for a sync.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Bytes waiting for a sync.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// One past the last dirty byte: the file's size as readers see it is at least this.
    pub fn end(&self) -> Option<u64> {
        self.extents
            .iter()
            .next_back()
            .map(|(start, data)| start + data.len() as u64)
    }

    /// Keys of the extents that overlap or touch `[start, end]`, in order.
    fn touching(&self, start: u64, end: u64) -> Vec<u64> {
        let first = match self.extents.range(..=start).next_back() {
            Some((&k, v)) if k + v.len() as u64 >= start => k,
            _ => start,
        };
        self.extents.range(first..=end).map(|(&k, _)| k).collect()
    }

    /// Records `data` written at `offset`, on top of whatever was dirty there.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OffsetOverflow> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(OffsetOverflow {
                offset,
                len: data.len(),
            })?;
        if data.is_empty() {
            return Ok(());
        }
        let keys = self.touching(offset, end);
        let new_end = keys
            .iter()
            .map(|k| k + self.extents[k].len() as u64)
            .chain([end])
            .max()
            .unwrap_or(end);
        // Reuse the buffer of an extent starting at or before the write: appends then grow
        // one Vec in place instead of copying the whole extent each time.
        let (start, mut buf, others) = match keys.first() {
            Some(&k) if k <= offset => {
                let buf = self.extents.remove(&k).unwrap_or_default();
                self.bytes -= buf.len() as u64;
                (k, buf, &keys[1..])
            }
            _ => (offset, Vec::new(), &keys[..]),
        };
        buf.resize((new_end - start) as usize, 0);
        for k in others {
            let Some(old) = self.extents.remove(k) else {
                continue;
            };
            self.bytes -= old.len() as u64;
            let old_end = k + old.len() as u64;
            // Only the part past the new write survives; the rest is overwritten.
            if old_end > end {
                let from = (end - k) as usize;
                buf[(end - start) as usize..(old_end - start) as usize]
                    .copy_from_slice(&old[from..]);
            }
        }
        buf[(offset - start) as usize..(end - start) as usize].copy_from_slice(data);
        self.bytes += buf.len() as u64;
        self.extents.insert(start, buf);
        Ok(())
    }

    /// Copies the dirty bytes within `[offset, offset + buf.len())` over `buf`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset.saturating_add(buf.len() as u64);
        if end == offset {
            return;
        }
        let first = match self.extents.range(..=offset).next_back() {
            Some((&k, _)) => k,
            None => offset,
        };
        for (&k, data) in self.extents.range(first..end) {
            let s = k.max(offset);
            let e = (k + data.len() as u64).min(end);
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&data[(s - k) as usize..(e - k) as usize]);
            }
        }
    }

    /// Forgets the dirty bytes within `[start, end)`, as a truncate or a punched hole does.
    pub fn remove_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let first = match self.extents.range(..=start).next_back() {
            Some((&k, _)) => k,
            None => start,
        };
        let keys: Vec<u64> = self.extents.range(first..end).map(|(&k, _)| k).collect();
        for k in keys {
            let Some(data) = self.extents.remove(&k) else {
                continue;
            };
            let k_end = k + data.len() as u64;
            if k_end <= start {
                self.extents.insert(k, data);
                continue;
            }
            self.bytes -= data.len() as u64;
            if k < start {
                let head = data[..(start - k) as usize].to_vec();
                self.bytes += head.len() as u64;
                self.extents.insert(k, head);
            }
            if k_end > end {
                let tail = data[(end - k) as usize..].to_vec();
                self.bytes += tail.len() as u64;
                self.extents.insert(end, tail);
            }
        }
    }

    /// Takes every dirty extent out (to be written to the backing file), leaving none.
    pub fn take(&mut self) -> BTreeMap<u64, Vec<u8>> {
        self.bytes = 0;
        std::mem::take(&mut self.extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `[offset, offset + len)` over a backing file of zeros.
    fn read(d: &Dirty, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        d.overlay(offset, &mut buf);
        buf
    }

    fn check_invariants(d: &Dirty) {
        let mut prev_end = None;
        let mut total = 0;
        for (&k, v) in &d.extents {
            assert!(!v.is_empty(), "empty extent at {k}");
            if let Some(p) = prev_end {
                assert!(k > p, "extents overlap or touch at {k}");
            }
            prev_end = Some(k + v.len() as u64);
            total += v.len() as u64;
        }
        assert_eq!(total, d.bytes);
    }

    #[test]
    fn appends_merge_into_one_extent() {
        let mut d = Dirty::default();
        for i in 0..100u64 {
            d.write(i * 3, &[i as u8; 3]).unwrap();
        }
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.bytes(), 300);
        assert_eq!(d.end(), Some(300));
        assert_eq!(read(&d, 297, 3), vec![99; 3]);
        check_invariants(&d);
    }

    #[test]
    fn overwrites_keep_the_newest_bytes() {
        let mut d = Dirty::default();
        d.write(10, b"aaaa").unwrap();
        d.write(20, b"bbbb").unwrap();
        d.write(30, b"cccc").unwrap();
        // Spans the gap between the first two and the head of the second.
        d.write(12, b"XXXXXXXXXX").unwrap();
        check_invariants(&d);
        assert_eq!(read(&d, 10, 14), b"aaXXXXXXXXXXbb");
        // Starts before every extent and ends inside the last.
        d.write(5, &[b'Y'; 27]).unwrap();
        check_invariants(&d);
        assert_eq!(d.extents.len(), 1);
        assert_eq!(read(&d, 5, 29), [vec![b'Y'; 27], b"cc".to_vec()].concat());
        assert_eq!(d.end(), Some(34));
    }

    #[test]
    fn holes_read_as_what_is_below() {
        let mut d = Dirty::default();
        d.write(4, b"ab").unwrap();
        let mut buf = *b"12345678";
        d.overlay(0, &mut buf);
        assert_eq!(&buf, b"1234ab78");
    }

    #[test]
    fn remove_range_splits_extents() {
        let mut d = Dirty::default();
        d.write(0, b"0123456789").unwrap();
        d.remove_range(3, 6);
        check_invariants(&d);
        assert_eq!(read(&d, 0, 10), b"012\x00\x00\x006789");
        d.remove_range(8, u64::MAX);
        check_invariants(&d);
        assert_eq!(d.end(), Some(8));
        d.remove_range(0, u64::MAX);
        assert!(d.is_empty());
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn take_empties() {
        let mut d = Dirty::default();
        d.write(7, b"x").unwrap();
        let taken = d.take();
        assert_eq!(taken.get(&7).map(Vec::as_slice), Some(b"x".as_slice()));
        assert!(d.is_empty());
        assert_eq!(d.end(), None);
    }

    #[test]
    fn overflowing_offsets_are_refused() {
        let mut d = Dirty::default();
        assert_eq!(
            d.write(u64::MAX - 1, b"abc"),
            Err(OffsetOverflow {
                offset: u64::MAX - 1,
                len: 3
            })
        );
        assert!(d.is_empty());
        // Reading near the end of the offset space is harmless.
        assert_eq!(read(&d, u64::MAX - 2, 8), vec![0; 8]);
    }

    /// Random writes and removals against a plain byte array.
    #[test]
    fn matches_a_flat_model() {
        let mut d = Dirty::default();
        let mut model: Vec<Option<u8>> = vec![None; 256];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let off = next() % 200;
            let len = (next() % 40) as usize + 1;
            if next() % 5 == 0 {
                let end = (off + len as u64).min(256);
                d.remove_range(off, end);
                model[off as usize..end as usize].fill(None);
            } else {
                let data: Vec<u8> = (0..len).map(|i| (round + i) as u8).collect();
                d.write(off, &data).unwrap();
                for (i, b) in data.iter().enumerate() {
                    model[off as usize + i] = Some(*b);
                }
            }
            check_invariants(&d);
        }
        let mut buf = vec![0xEE; 256];
        d.overlay(0, &mut buf);
        for (i, m) in model.iter().enumerate() {
            assert_eq!(buf[i], m.unwrap_or(0xEE), "byte {i}");
        }
        assert_eq!(
            d.bytes(),
            model.iter().filter(|m| m.is_some()).count() as u64
        );
    }
}
