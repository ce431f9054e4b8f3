//! Where a replica stands in its kind's view: the one reading of a coordinator's view
//! report (`GET /vs/{kind}/view`) and of a replica's `/replication/status` that `local
//! add`, `local remove`, `local up` and `ec2 wait-member` share.
use bookstore_replication::node::{ReplicaRole, Status};
use bookstore_replication::wire::KindReport;

/// A replica's place in the current view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The view service has decided no view yet.
    NoView,
    /// Neither the primary nor a backup of the view.
    Out,
    /// A backup that does not hold every committed entry yet.
    CatchingUp,
    /// The primary, or a backup holding every committed entry, of the view `epoch`.
    Member { epoch: u64, role: ReplicaRole },
}

/// Where replica `id` stands in `doc`.
pub fn standing(doc: &KindReport, id: u32) -> Standing {
    let Some(v) = &doc.view else {
        return Standing::NoView;
    };
    if v.primary == id {
        Standing::Member {
            epoch: v.epoch,
            role: ReplicaRole::Primary,
        }
    } else if !v.backups.contains(&id) {
        Standing::Out
    } else if doc.synced.contains(&id) {
        Standing::Member {
            epoch: v.epoch,
            role: ReplicaRole::Backup,
        }
    } else {
        Standing::CatchingUp
    }
}

/// Whether a replica acts as `role` in the view `epoch` and serves reads, by its own
/// account (it may lag behind the view service by a ping).
pub fn acts_as(status: &Status, epoch: u64, role: ReplicaRole) -> bool {
    status.serving_reads && status.epoch == epoch && status.role == role
}

/// `epoch 3: primary 0, backups [1], synced [1]`, or `no view yet`.
pub fn summary(doc: &KindReport) -> String {
    match &doc.view {
        None => "no view yet".into(),
        Some(v) => format!(
            "epoch {}: primary {}, backups {:?}, synced {:?}",
            v.epoch, v.primary, v.backups, doc.synced
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bookstore_replication::protocol::View;

    #[test]
    fn a_replica_stands_where_the_view_and_its_synced_set_put_it() {
        let mut doc = KindReport::default();
        assert_eq!(standing(&doc, 0), Standing::NoView);
        assert_eq!(summary(&doc), "no view yet");
        doc.view = Some(View {
            epoch: 4,
            primary: 1,
            backups: vec![0, 2],
        });
        doc.synced = vec![2];
        let member = |role| Standing::Member { epoch: 4, role };
        for (id, want) in [
            (1, member(ReplicaRole::Primary)),
            (0, Standing::CatchingUp),
            (2, member(ReplicaRole::Backup)),
            (3, Standing::Out),
        ] {
            assert_eq!(standing(&doc, id), want, "replica {id}");
        }
        assert_eq!(
            summary(&doc),
            "epoch 4: primary 1, backups [0, 2], synced [2]"
        );
        let status = Status {
            serving_reads: true,
            epoch: 4,
            role: ReplicaRole::Backup,
            ..Status::default()
        };
        assert!(acts_as(&status, 4, ReplicaRole::Backup));
        assert!(!acts_as(&status, 5, ReplicaRole::Backup));
        assert!(!acts_as(&status, 4, ReplicaRole::Primary));
    }
}
