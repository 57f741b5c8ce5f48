//! Byte budgets: no legal request can make a frame its receiver refuses. A follower that
//! missed hundreds of maximal writes catches up (openraft batches by count, and 300 entries
//! of 60 KB are 18 MB, more than a 16 MiB frame); a table of large records lists in pages, and
//! a watch from the start delivers every one of those revisions.

use augur_proto::model::limits::MAX_SETTING_VALUE;
use augur_proto::wire::MAX_LIST_LIMIT;
use augur_proto::{Consistency, Op, Record, Setting, Table, Txn};
use augur_tests::LocalCluster;
use futures::StreamExt;
use std::time::Duration;

const WRITES: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_writes_reach_a_lagging_follower_and_list_and_watch_in_pages() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3).await?;
    let c = &cluster.client;
    let leader = cluster.leader(Duration::from_secs(30)).await?;
    let lagging = if leader == 3 { 2 } else { 3 };
    cluster.stop(lagging, false)?;

    let value = vec![b'v'; MAX_SETTING_VALUE - 4 * 1024];
    let mut first = 0;
    let mut last = 0;
    for i in 0..WRITES {
        let r = c
            .txn(Txn {
                compares: vec![],
                ops: vec![Op::Put(Record::Setting(Setting {
                    name: format!("big-{i:04}"),
                    value: value.clone(),
                    version: 0,
                }))],
            })
            .await?;
        if i == 0 {
            first = r.revision;
        }
        last = r.revision;
    }

    // The follower comes back 24 MB behind and catches up.
    cluster.start_member(lagging)?;
    let s = cluster
        .wait_applied(lagging, last, Duration::from_secs(120))
        .await?;
    assert!(s.applied >= last);

    // The table is larger than a frame: one page cannot hold it, every page fits, and all of
    // it comes back.
    let (page, more, _) = c
        .list_page(
            Table::Settings,
            None,
            MAX_LIST_LIMIT,
            Consistency::Linearizable,
        )
        .await?;
    assert!(more, "{} records in one page", page.len());
    assert!(page.len() < WRITES);
    let (all, _) = c.list(Table::Settings, Consistency::Linearizable).await?;
    assert_eq!(all.len(), WRITES);

    // A watch from the first of them delivers every revision, in order, once, from the
    // member that was lagging.
    let endpoint = cluster.endpoint(lagging)?;
    let one = augur_client::Client::new(augur_client::ClientConfig::new(
        vec![endpoint],
        cluster.cluster_file()?.tls,
    ))?;
    let mut watch = one.watch(vec![Table::Settings], first);
    let mut prev = first - 1;
    for _ in 0..WRITES {
        let ev = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await?
            .expect("the watch goes on")?;
        assert!(ev.revision > prev, "revision {} after {prev}", ev.revision);
        assert!(ev.revision <= last);
        prev = ev.revision;
    }
    assert_eq!(prev, last);
    Ok(())
}
