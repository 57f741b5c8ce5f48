use super::*;
use augur_proto::NodeId;

/// (refresh, at once, may have applied) for an error answer.
fn judged(e: DataError) -> Option<(Refresh, bool, bool)> {
    match judge("127.0.0.1:1", Ok(DataResponse::Error(e))) {
        (
            Outcome::Again {
                refresh, at_once, ..
            },
            applied,
        ) => Some((refresh, at_once, applied)),
        _ => None,
    }
}

#[test]
fn a_newer_configuration_is_followed_at_once_and_anything_else_backs_off() {
    let shard = ShardId(4);
    let redirect = DataError::Redirect(augur_proto::data::Redirect {
        shard,
        epoch: 4,
        primary: Some(NodeId(2)),
    });
    assert_eq!(judged(redirect), Some((Refresh::Shard, true, false)));
    let stale = DataError::StaleEpoch { shard, epoch: 4 };
    assert_eq!(judged(stale), Some((Refresh::Shard, true, false)));
    assert_eq!(
        judged(DataError::UnknownShard(shard)),
        Some((Refresh::Shard, true, false))
    );
    // A hand-off in progress: the same answer would come back at once.
    assert_eq!(
        judged(DataError::Unavailable("handing off".into())),
        Some((Refresh::Shard, false, false))
    );
    assert_eq!(
        judged(DataError::Behind { shard, epoch: 2 }),
        Some((Refresh::Shard, false, false))
    );
    assert_eq!(
        judged(DataError::Indeterminate("lost its lease".into())),
        Some((Refresh::Shard, false, true))
    );
    assert_eq!(
        judged(DataError::Internal("cannot append to the log".into())),
        Some((Refresh::Nothing, false, true))
    );
    assert!(judged(DataError::InvalidArgument("key too long".into())).is_none());
    assert!(judged(DataError::PermissionDenied("clients only".into())).is_none());
}
