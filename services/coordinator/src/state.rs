//! The coordinator group's replicated state and the commands that change it, as a pure
//! state machine: every coordinator applies the same committed [`Proposal`]s in the same
//! order and reaches the same [`ControlState`]. No I/O, no clock.
//!
//! What is here is everything that must survive any single failure: per replicated kind
//! the view service's decided state ([`VsState`]: view, acknowledgement, synced set,
//! incarnations) and the member table. Soft state (when each replica last pinged, what it
//! reported) lives only on the leader ([`crate::authority`]).
use bookstore_replication_core::lease::DEAD_TICKS;
use bookstore_replication_core::protocol::{Epoch, ReplicaId};
use bookstore_replication_core::viewservice::{VsConfig, VsState};
use bookstore_replication_core::wire::Members;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A coordinator's id (a Raft node id).
pub type CoordinatorId = u64;

/// The decided state of one replicated kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindState {
    /// The view service's decided state.
    pub vs: VsState,
    /// Who may take part, by id.
    pub members: Members,
    /// Replicas a new cluster starts with: a cold start waits for them.
    pub initial_replicas: u32,
    /// Bumped by every committed change of this kind; a [`Proposal::Decide`] names the
    /// version it was computed from and is refused if another change came first.
    pub version: u64,
    /// The coordinator that decided the current view, and the Raft term it led.
    pub decided_by: Option<(CoordinatorId, u64)>,
}

impl KindState {
    /// The view-service configuration every leader uses for this kind.
    pub fn vs_config(&self) -> VsConfig {
        VsConfig {
            replicas: self.initial_replicas,
            dead_ticks: DEAD_TICKS,
            startup_ticks: DEAD_TICKS,
        }
    }
}

/// Everything the coordinator group decides.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// By kind name (`catalog`, `order`).
    pub kinds: BTreeMap<String, KindState>,
    /// The id the next added coordinator gets (ids are never reused).
    pub next_coordinator: CoordinatorId,
}

/// A change to the [`ControlState`], committed through Raft before anyone sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// Creates each kind that does not exist yet, with the cluster file's replicas as its
    /// member table. Kinds that exist are left alone, so every leader may propose it.
    Bootstrap { kinds: Vec<(String, Vec<String>)> },
    /// The view service of `kind` changed its decided state from version `base`.
    Decide {
        kind: String,
        base: u64,
        state: VsState,
        by: CoordinatorId,
        term: u64,
    },
    /// Adds a replica at `url` (scale out).
    Register { kind: String, url: String },
    /// Retires replica `id` (scale in).
    Unregister { kind: String, id: ReplicaId },
    /// Replica `id` pinged (with the cluster token) from the URL it was registered with.
    Prove { kind: String, id: ReplicaId },
    /// Reserves the id of a coordinator about to be added.
    ReserveCoordinator,
}

/// What applying a [`Proposal`] answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Done; the kind's new version (0 for changes that are not of one kind).
    Done { version: u64 },
    /// A replica's id (a registration, or a retried one).
    Registered { id: ReplicaId, version: u64 },
    /// A reserved coordinator id.
    Coordinator { id: CoordinatorId },
    /// Refused, with why. Nothing changed.
    Refused(Refusal),
}

/// Why a proposal changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("no replicated service {0:?}")]
    UnknownKind(String),
    #[error("{kind} changed since this decision was computed (version {current}, not {base})")]
    Stale {
        kind: String,
        base: u64,
        current: u64,
    },
    #[error("{kind} {id} is not a member")]
    NotMember { kind: String, id: ReplicaId },
    #[error("the {0} view is changing (not yet acknowledged by its primary); retry shortly")]
    ViewChanging(String),
    #[error(
        "{kind} {id} cannot be retired: no other member holds every committed write \
         (add a replica and wait until it is synced first)"
    )]
    LastHolder { kind: String, id: ReplicaId },
}

impl ControlState {
    /// Applies one committed proposal. Deterministic: it depends on nothing but `self`
    /// and `p`.
    pub fn apply(&mut self, p: Proposal) -> Applied {
        match p {
            Proposal::Bootstrap { kinds } => {
                for (kind, urls) in kinds {
                    self.kinds.entry(kind).or_insert_with(|| KindState {
                        members: Members::initial(&urls),
                        initial_replicas: urls.len() as u32,
                        ..KindState::default()
                    });
                }
                Applied::Done { version: 0 }
            }
            Proposal::Decide {
                kind,
                base,
                state,
                by,
                term,
            } => {
                let Some(k) = self.kinds.get_mut(&kind) else {
                    return Applied::Refused(Refusal::UnknownKind(kind));
                };
                if k.version != base {
                    let current = k.version;
                    return Applied::Refused(Refusal::Stale {
                        kind,
                        base,
                        current,
                    });
                }
                let epoch = |s: &VsState| s.view.as_ref().map_or(0, |v| v.epoch);
                if epoch(&state) != epoch(&k.vs) {
                    k.decided_by = Some((by, term));
                }
                k.vs = state;
                k.version += 1;
                Applied::Done { version: k.version }
            }
            Proposal::Register { kind, url } => {
                let Some(k) = self.kinds.get_mut(&kind) else {
                    return Applied::Refused(Refusal::UnknownKind(kind));
                };
                if let Some((id, _)) = k.members.urls.iter().find(|(_, u)| **u == url) {
                    return Applied::Registered {
                        id: *id,
                        version: k.version,
                    };
                }
                let id = k.members.next_id;
                k.members.urls.insert(id, url);
                k.members.unproven.insert(id);
                k.members.next_id += 1;
                k.version += 1;
                Applied::Registered {
                    id,
                    version: k.version,
                }
            }
            Proposal::Unregister { kind, id } => {
                let Some(k) = self.kinds.get_mut(&kind) else {
                    return Applied::Refused(Refusal::UnknownKind(kind));
                };
                if let Err(r) = k.may_retire(&kind, id) {
                    return Applied::Refused(r);
                }
                k.members.urls.remove(&id);
                k.members.unproven.remove(&id);
                k.version += 1;
                Applied::Done { version: k.version }
            }
            Proposal::Prove { kind, id } => {
                let Some(k) = self.kinds.get_mut(&kind) else {
                    return Applied::Refused(Refusal::UnknownKind(kind));
                };
                if k.members.unproven.remove(&id) {
                    k.version += 1;
                }
                Applied::Done { version: k.version }
            }
            Proposal::ReserveCoordinator => {
                let id = self.next_coordinator;
                self.next_coordinator += 1;
                Applied::Coordinator { id }
            }
        }
    }

    /// Notes that `ids` are coordinators (a membership change was committed): the next
    /// reserved id is above all of them.
    pub fn saw_coordinators(&mut self, ids: impl IntoIterator<Item = CoordinatorId>) {
        for id in ids {
            self.next_coordinator = self.next_coordinator.max(id + 1);
        }
    }

    /// The epoch of `kind`'s current view (0: none).
    pub fn epoch(&self, kind: &str) -> Epoch {
        self.kinds
            .get(kind)
            .and_then(|k| k.vs.view.as_ref())
            .map_or(0, |v| v.epoch)
    }
}

impl KindState {
    /// May replica `id` be retired now? Not while the view is unacknowledged (the view
    /// service waits for that acknowledgement before any change, so retiring that primary
    /// would freeze it), and not if no other member holds every committed write.
    fn may_retire(&self, kind: &str, id: ReplicaId) -> Result<(), Refusal> {
        if !self.members.urls.contains_key(&id) {
            return Err(Refusal::NotMember {
                kind: kind.into(),
                id,
            });
        }
        if self.vs.view.is_some() && !self.vs.acked {
            return Err(Refusal::ViewChanging(kind.into()));
        }
        let mut holders: Vec<ReplicaId> = self.vs.synced.iter().copied().collect();
        if let Some(v) = &self.vs.view {
            holders.push(v.primary);
        }
        let others_hold = holders
            .iter()
            .any(|h| *h != id && self.members.urls.contains_key(h));
        if !others_hold {
            return Err(Refusal::LastHolder {
                kind: kind.into(),
                id,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bookstore_replication_core::protocol::View;

    fn boot() -> ControlState {
        let mut s = ControlState::default();
        s.apply(Proposal::Bootstrap {
            kinds: vec![(
                "catalog".into(),
                vec!["http://a:1".into(), "http://a:2".into()],
            )],
        });
        s
    }

    #[test]
    fn bootstrap_is_idempotent() {
        let mut s = boot();
        let before = s.clone();
        s.apply(Proposal::Bootstrap {
            kinds: vec![("catalog".into(), vec!["http://other:9".into()])],
        });
        assert_eq!(s, before);
        assert_eq!(s.kinds["catalog"].members.next_id, 2);
        assert_eq!(s.kinds["catalog"].initial_replicas, 2);
    }

    #[test]
    fn a_decision_from_an_old_version_is_refused() {
        let mut s = boot();
        let state = VsState {
            view: Some(View {
                epoch: 1,
                primary: 0,
                backups: vec![1],
            }),
            ..VsState::default()
        };
        let decide = |base| Proposal::Decide {
            kind: "catalog".into(),
            base,
            state: state.clone(),
            by: 2,
            term: 5,
        };
        assert_eq!(s.apply(decide(0)), Applied::Done { version: 1 });
        assert_eq!(s.kinds["catalog"].decided_by, Some((2, 5)));
        assert!(matches!(
            s.apply(decide(0)),
            Applied::Refused(Refusal::Stale { current: 1, .. })
        ));
        assert_eq!(s.epoch("catalog"), 1);
    }

    #[test]
    fn registration_gives_new_ids_and_is_idempotent_per_url() {
        let mut s = boot();
        let reg = |s: &mut ControlState, url: &str| {
            s.apply(Proposal::Register {
                kind: "catalog".into(),
                url: url.into(),
            })
        };
        assert!(matches!(
            reg(&mut s, "http://a:3"),
            Applied::Registered { id: 2, .. }
        ));
        assert!(matches!(
            reg(&mut s, "http://a:3"),
            Applied::Registered { id: 2, .. }
        ));
        // Not shown to anyone holding the cluster token until it pings from there.
        let members = &s.kinds["catalog"].members;
        assert!(!members.proven().contains_key(&2));
        assert!(
            members.proven().contains_key(&0),
            "the cluster file's are proven"
        );
        s.apply(Proposal::Prove {
            kind: "catalog".into(),
            id: 2,
        });
        assert!(s.kinds["catalog"].members.proven().contains_key(&2));
        assert!(matches!(
            s.apply(Proposal::Register {
                kind: "nope".into(),
                url: "http://a:4".into()
            }),
            Applied::Refused(Refusal::UnknownKind(_))
        ));
    }

    #[test]
    fn retiring_the_last_holder_or_during_a_view_change_is_refused() {
        let mut s = boot();
        let k = s.kinds.get_mut("catalog").unwrap();
        k.vs.view = Some(View {
            epoch: 3,
            primary: 0,
            backups: vec![1],
        });
        let retire = |s: &mut ControlState, id| {
            s.apply(Proposal::Unregister {
                kind: "catalog".into(),
                id,
            })
        };
        assert!(matches!(
            retire(&mut s, 1),
            Applied::Refused(Refusal::ViewChanging(_))
        ));
        s.kinds.get_mut("catalog").unwrap().vs.acked = true;
        assert!(matches!(
            retire(&mut s, 0),
            Applied::Refused(Refusal::LastHolder { .. })
        ));
        // Backup 1 is not synced, but the primary holds everything: 1 may go.
        assert!(matches!(retire(&mut s, 1), Applied::Done { .. }));
        assert!(matches!(
            retire(&mut s, 1),
            Applied::Refused(Refusal::NotMember { .. })
        ));
    }

    #[test]
    fn coordinator_ids_are_never_reused() {
        let mut s = ControlState::default();
        s.saw_coordinators([0, 1, 2]);
        assert_eq!(
            s.apply(Proposal::ReserveCoordinator),
            Applied::Coordinator { id: 3 }
        );
        s.saw_coordinators([0, 1]);
        assert_eq!(
            s.apply(Proposal::ReserveCoordinator),
            Applied::Coordinator { id: 4 }
        );
    }
}
