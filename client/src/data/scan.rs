//! A prefix scan across every shard, merged in key order.
//!
//! Keys hash over all shards, so the keys with a prefix are spread over every shard and each
//! shard returns its own in key order. The scan keeps a cursor and a small buffer per shard
//! and repeatedly hands out the smallest buffered key (a k-way merge); a shard whose buffer
//! runs dry is asked for its next page before anything else is handed out, since its next key
//! may be the smallest. The first page asks every shard (concurrently, a few at a time); later
//! pages ask only the shards whose buffers emptied.
//!
//! Each shard is first asked for its share of the page, about `limit / shards + 1` items; a
//! shard that runs dry again within the same page is asked for twice as many as the time
//! before (at most what the page still lacks). A shard can only run dry by handing out
//! everything it was given, so what it holds stays within what it has already handed out:
//! memory stays near a page of items whatever the shard count, and a page whose keys sit
//! mostly in one shard costs a few round trips, not one per item (the share is one item
//! when there are as many shards as the limit). The smallest key comes from a heap of the
//! buffers' first keys, and only the cursors that ran dry are looked at for a fetch, so
//! handing out an item costs O(log shards), not a pass over every shard (65,536 at most).
//! The scan is not a snapshot: each shard page is read at its primary when asked for, so
//! writes made during a scan may or may not show.

use super::DataClient;
use crate::error::Error;
use augur_proto::data::{DataError, Versioned, MAX_SCAN_LIMIT};
use augur_proto::ShardId;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// One shard's place in the merge.
struct Cursor {
    shard: ShardId,
    /// Items fetched and not yet handed out, in key order.
    buf: VecDeque<(Vec<u8>, Versioned)>,
    /// The last key fetched from the shard: the next page starts after it.
    after: Option<Vec<u8>>,
    /// Whether the shard may hold more after `after`.
    more: bool,
    /// Items to ask for at its next fetch in this page (doubling within a page).
    want: u32,
}

impl Cursor {
    fn needs_fetch(&self) -> bool {
        self.buf.is_empty() && self.more
    }
}

/// A scan over every shard for keys with one prefix, read a page at a time with
/// [`PrefixScan::next_page`]. Made by [`DataClient::scan`].
pub struct PrefixScan {
    client: DataClient,
    prefix: Vec<u8>,
    cursors: Vec<Cursor>,
    /// The first key of every non-empty buffer, with its cursor.
    fronts: BinaryHeap<Reverse<(Vec<u8>, usize)>>,
    /// Cursors whose buffer is empty and whose shard may hold more.
    dry: Vec<usize>,
}

impl PrefixScan {
    pub(super) fn new(client: DataClient, prefix: Vec<u8>, start_after: Option<&[u8]>) -> Self {
        let cursors = (1..=u64::from(client.layout().shards))
            .map(|id| Cursor {
                shard: ShardId(id),
                buf: VecDeque::new(),
                after: start_after.map(<[u8]>::to_vec),
                more: true,
                want: 1,
            })
            .collect::<Vec<_>>();
        PrefixScan {
            client,
            prefix,
            dry: (0..cursors.len()).collect(),
            cursors,
            fronts: BinaryHeap::new(),
        }
    }

    /// Whether every item has been handed out.
    pub fn is_done(&self) -> bool {
        self.fronts.is_empty() && self.dry.is_empty()
    }

    /// The next items in key order, at most `limit` (1..=[`MAX_SCAN_LIMIT`], anything else
    /// refused as a scan of one shard refuses it); empty once the scan is done. A page may
    /// be short when a shard could not be read after some items were merged: they are
    /// returned and the failure comes with the next call, so nothing is skipped or handed
    /// out twice.
    pub async fn next_page(&mut self, limit: u32) -> Result<Vec<(Vec<u8>, Versioned)>, Error> {
        if !(1..=MAX_SCAN_LIMIT).contains(&limit) {
            return Err(Error::Data(DataError::InvalidArgument(format!(
                "a scan limit is 1..={MAX_SCAN_LIMIT}, got {limit}"
            ))));
        }
        let shards = self.cursors.len().max(1) as u32;
        let share = (limit / shards + 1).min(limit);
        for c in &mut self.cursors {
            c.want = share;
        }
        let mut out = Vec::new();
        while out.len() < limit as usize {
            // Every shard with more must show its next key before the smallest is chosen.
            if let Err(e) = self.fill_all(limit - out.len() as u32).await {
                if out.is_empty() {
                    return Err(e);
                }
                break;
            }
            let Some(Reverse((_, i))) = self.fronts.pop() else {
                break;
            };
            let cursor = &mut self.cursors[i];
            if let Some(item) = cursor.buf.pop_front() {
                out.push(item);
            }
            self.track(i);
        }
        Ok(out)
    }

    /// Puts cursor `i` where it belongs now: in the heap by its first key, among the dry
    /// ones, or nowhere (its shard is done).
    fn track(&mut self, i: usize) {
        let cursor = &self.cursors[i];
        match cursor.buf.front() {
            Some((k, _)) => self.fronts.push(Reverse((k.clone(), i))),
            None if cursor.needs_fetch() => self.dry.push(i),
            None => {}
        }
    }

    /// Fetches a page for every cursor whose buffer is empty and whose shard has more, of
    /// its `want` items but no more than the `lacking` the page still needs. On an error
    /// nothing is absorbed and the same cursors stay dry.
    async fn fill_all(&mut self, lacking: u32) -> Result<(), Error> {
        if self.dry.is_empty() {
            return Ok(());
        }
        let wanted = self.dry.clone();
        let (client, prefix, cursors) = (&self.client, &self.prefix, &self.cursors);
        let pages: Vec<(usize, Fetched)> = stream::iter(wanted)
            .map(|i| async move {
                let c = &cursors[i];
                fetch_page(client, prefix, c, c.want.min(lacking).max(1))
                    .await
                    .map(|p| (i, p))
            })
            .buffer_unordered(client.inner.cfg.scan_concurrency.max(1))
            .try_collect()
            .await?;
        self.dry.clear();
        for (i, page) in pages {
            let c = &mut self.cursors[i];
            absorb(c, page);
            c.want = c.want.saturating_mul(2).min(MAX_SCAN_LIMIT);
            self.track(i);
        }
        Ok(())
    }
}

/// A shard page, to be folded into its cursor.
type Fetched = (Vec<(Vec<u8>, Versioned)>, bool);

async fn fetch_page(
    client: &DataClient,
    prefix: &[u8],
    cursor: &Cursor,
    limit: u32,
) -> Result<Fetched, Error> {
    let page = client
        .scan_shard(cursor.shard, prefix, cursor.after.as_deref(), limit)
        .await?;
    Ok((page.items, page.more))
}

fn absorb(cursor: &mut Cursor, (items, more): Fetched) {
    if let Some((k, _)) = items.last() {
        cursor.after = Some(k.clone());
    }
    // A page that brought nothing and says "more" would never end: a node bounded by bytes
    // always returns at least one item, so an empty page means the shard is done.
    cursor.more = more && !items.is_empty();
    cursor.buf.extend(items);
}
