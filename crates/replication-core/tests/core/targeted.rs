//! Targeted deterministic scenarios on the simulated cluster, plus unit tests of the
//! replica and the view service in isolation.
use crate::common;

use bookstore_replication_core::protocol::{
    Command, Config, DurableState, Entry, Event, Msg, Outcome, Replica, RequestId, Role,
    SnapshotMeta, View,
};
use bookstore_replication_core::viewservice::{Ping, ViewService, VsCommand, VsConfig, VsEvent};
use common::{Cluster, Node};

fn cfg(max_retained_log: usize) -> Config {
    Config {
        heartbeat_ticks: 1,
        dead_ticks: 5,
        max_entries_per_msg: 64,
        max_retained_log,
        fencing: true,
        sync_ack: true,
        restart_fence: true,
    }
}

fn cluster(n: u32, stock: u64, max_retained_log: usize) -> Cluster {
    Cluster::new(
        n,
        stock,
        cfg(max_retained_log),
        VsConfig {
            replicas: n,
            dead_ticks: 5,
            startup_ticks: 3,
        },
    )
}

/// Run until the VS view holds every live replica, is acknowledged and all backups are synced.
fn stabilize(c: &mut Cluster) -> View {
    for _ in 0..200 {
        c.run_rounds(1);
        let vs = c.vs.as_ref().unwrap();
        let Some(v) = vs.view().cloned() else {
            continue;
        };
        let live = (0..c.n).filter(|r| c.is_up(*r)).count();
        if vs.acked()
            && 1 + v.backups.len() == live
            && v.backups.iter().all(|b| vs.synced().contains(b))
            && c.serving_primary() == Some(v.primary)
        {
            return v;
        }
    }
    panic!("cluster did not stabilize: {:?}", c.vs_view());
}

/// Write `k` buys through the current primary, settling after each batch of 50.
fn write_many(c: &mut Cluster, first: u64, k: u64) {
    let mut next = first;
    while next < first + k {
        let p = c.vs_view().unwrap().primary;
        let end = (next + 50).min(first + k);
        for req in next..end {
            c.client_write(p, req);
        }
        c.settle();
        c.tick_all();
        c.settle();
        next = end;
    }
    c.run_rounds(2);
    for req in first..first + k {
        assert!(
            c.acked.iter().any(|a| a.request == req),
            "request {req} was not acknowledged"
        );
    }
    c.assert_ok();
}

#[test]
fn cold_start_prefers_lowest_id_and_commits() {
    let mut c = cluster(3, 10, 1000);
    let v = stabilize(&mut c);
    assert_eq!(v.primary, 0);
    assert_eq!(v.backups, vec![1, 2]);
    write_many(&mut c, 1, 5);
    for r in 0..3 {
        assert_eq!(c.servers[r].sm.sold, 5, "replica {r}");
    }
}

#[test]
fn primary_crash_promotes_synced_backup() {
    let mut c = cluster(3, 100, 1000);
    stabilize(&mut c);
    write_many(&mut c, 1, 20);
    c.crash(0, false);
    let v = stabilize(&mut c);
    assert_eq!(v.primary, 1, "lowest-id synced backup is promoted");
    assert!(v.epoch >= 2);
    assert_eq!(c.servers[1].sm.sold, 20);
    write_many(&mut c, 100, 5);
    assert_eq!(c.servers[1].sm.sold, 25);
}

#[test]
fn no_synced_backup_means_no_promotion() {
    // Two replicas; the backup is crashed before it ever synced, then the primary dies.
    let mut c = cluster(2, 10, 1000);
    stabilize(&mut c);
    write_many(&mut c, 1, 3);
    c.crash(1, true); // backup loses its disk
    c.run_rounds(20); // VS removes it
    c.restart(1); // comes back empty: re-added, unsynced
    c.cut_link(Node::R(0), Node::R(1)); // ... but cannot catch up
    c.run_rounds(20);
    let v = c.vs_view().unwrap();
    assert!(v.backups.contains(&1));
    assert!(!c.vs.as_ref().unwrap().synced().contains(&1));
    c.crash(0, false);
    c.heal();
    c.run_rounds(30);
    // r1 is alive but never synced: it must not be promoted, whatever its id.
    assert_eq!(c.vs_view().unwrap().primary, 0);
    assert_ne!(c.replica(1).role(), Role::Primary);
    c.restart(0);
    let v = stabilize(&mut c);
    assert_eq!(v.primary, 0);
    assert_eq!(c.servers[1].sm.sold, 3, "r1 caught up from r0");
    c.assert_ok();
}

/// Restarted replica 0 missed 1000 writes; it must catch up before it serves or leads.
fn catch_up(max_retained_log: usize, lose_disk: bool) -> Cluster {
    let mut c = cluster(3, 2000, max_retained_log);
    stabilize(&mut c);
    write_many(&mut c, 1, 10);
    c.crash(0, lose_disk);
    let v = stabilize(&mut c);
    assert_eq!(v.primary, 1);
    write_many(&mut c, 1000, 1000);
    let acked_before = c.acked.len();
    c.restart(0);
    // Step slowly and watch r0: it never serves or leads before it has everything.
    let mut led = false;
    for _ in 0..300 {
        c.tick_all();
        for _ in 0..3 {
            if c.net.is_empty() {
                break;
            }
            let msgs = std::mem::take(&mut c.net);
            for m in msgs {
                c.deliver(m);
            }
            for r in 0..3 {
                c.flush_all(r);
            }
            let r0 = c.replica(0);
            let current = c.vs_view().map(|v| v.epoch) == r0.view().map(|v| v.epoch);
            if r0.can_serve_reads() || (r0.role() == Role::Primary && current) {
                assert!(
                    c.servers[0].sm.sold >= 1010,
                    "r0 serves/leads before catching up: sold {} role {:?}",
                    c.servers[0].sm.sold,
                    r0.role()
                );
            }
            if r0.role() == Role::Primary {
                led = true;
            }
        }
        c.check();
        c.assert_ok();
        if led && c.serving_primary() == Some(0) {
            break;
        }
    }
    assert!(led, "r0 never took over again (lowest-id hand-over)");
    let v = stabilize(&mut c);
    assert_eq!(v.primary, 0);
    assert_eq!(c.servers[0].sm.sold, 1010);
    assert_eq!(c.acked.len(), acked_before);
    c
}

#[test]
fn restarted_replica_catches_up_via_log_suffix() {
    let c = catch_up(100_000, false);
    assert_eq!(c.snapshots_installed, 0, "the suffix was retained");
}

#[test]
fn restarted_replica_catches_up_via_snapshot() {
    let c = catch_up(50, false);
    assert!(
        c.snapshots_installed >= 1,
        "log was truncated: needs a snapshot"
    );
    for r in 0..3 {
        assert!(
            c.replica(r).entries().count() <= 51 + 64,
            "retained log is bounded"
        );
    }
}

#[test]
fn replica_with_lost_disk_catches_up_before_leading() {
    let c = catch_up(50, true);
    assert!(c.snapshots_installed >= 1);
}

#[test]
fn deposed_primary_partitioned_from_vs_cannot_acknowledge() {
    let mut c = cluster(3, 100, 1000);
    stabilize(&mut c);
    write_many(&mut c, 1, 5);
    // r0 loses the VS but still talks to the backups.
    c.cut_link(Node::R(0), Node::Vs);
    for _ in 0..20 {
        c.run_rounds(1);
        if c.vs_view().unwrap().primary != 0 {
            break;
        }
    }
    let v = c.vs_view().unwrap();
    assert_eq!(v.primary, 1);
    c.run_rounds(2); // r1, r2 learn the new view
    let replies_before = c.replies.len();
    // r0 hears of the new epoch from its backups at once and steps down; a client that
    // still talks to it gets no Committed from it.
    c.client_write(0, 500);
    c.run_rounds(5);
    for (req, out) in &c.replies[replies_before..] {
        if *req == 500 {
            assert!(!matches!(out, Outcome::Committed { .. }), "{out:?}");
        }
    }
    assert_ne!(c.replica(0).role(), Role::Primary);
    // Fully isolated from everyone: still never acknowledges.
    let mut c = cluster(3, 100, 1000);
    stabilize(&mut c);
    c.isolate(0);
    c.client_write(0, 600);
    c.run_rounds(20);
    assert!(!c
        .replies
        .iter()
        .any(|(r, o)| *r == 600 && matches!(o, Outcome::Committed { .. })));
    // The new primary serves, and the retried request commits there exactly once.
    let p = c.vs_view().unwrap().primary;
    assert_ne!(p, 0);
    c.client_write(p, 600);
    c.run_rounds(3);
    c.heal();
    stabilize(&mut c);
    assert_eq!(c.servers[p as usize].sm.sold, 1);
    c.assert_ok();
}

fn view(epoch: u64, primary: u32, backups: &[u32]) -> View {
    View {
        epoch,
        primary,
        backups: backups.to_vec(),
    }
}

/// A replica with `entries` on disk that learned `v` from the view service (a view
/// persisted *before* a start is one the replica never leads: the restart fence).
fn replica_in(id: u32, v: View, entries: Vec<Entry>) -> Replica {
    let mut r = Replica::recover(
        id,
        cfg(1000),
        DurableState {
            incarnation: 1,
            view: None,
            snapshot: None,
            entries,
        },
    );
    let epoch = v.epoch;
    r.handle(Event::VsReply {
        view: Some(v),
        lead_from: 1,
    });
    r.handle(Event::ViewPersisted { epoch });
    r
}

/// Writes one entry of `bytes` bytes through a primary without backups; true if it asked
/// for a snapshot meanwhile.
fn write_alone(r: &mut Replica, request: u64, bytes: usize) -> bool {
    let mut cmds = r.handle(Event::ClientWrite {
        request: RequestId(request),
        data: vec![7; bytes],
    });
    let persisted: Vec<(u64, u64)> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Persist { entries } => entries.last().map(|e| (e.index, e.epoch)),
            _ => None,
        })
        .collect();
    for (index, epoch) in persisted {
        cmds.extend(r.handle(Event::Persisted { index, epoch }));
    }
    cmds.contains(&Command::TakeSnapshot)
}

/// Writes entries of 84 bytes (100 with index and epoch) from `request` on until one asks
/// for a snapshot; returns how many were written.
fn writes_until_snapshot(r: &mut Replica, request: &mut u64) -> u64 {
    let start = *request;
    loop {
        *request += 1;
        if write_alone(r, *request, 84) {
            return *request - start;
        }
        assert!(*request - start < 100_000, "no snapshot asked for");
    }
}

#[test]
fn a_snapshot_larger_than_the_entries_it_replaced_is_retaken_after_as_many_bytes() {
    let mut r = Replica::recover(0, cfg(10), DurableState::empty(1));
    r.handle(Event::VsReply {
        view: Some(view(1, 0, &[])),
        lead_from: 1,
    });
    r.handle(Event::ViewPersisted { epoch: 1 });
    assert_eq!(r.role(), Role::Primary);
    let mut request = 0;
    // The floor: more than `max_retained_log` entries.
    assert_eq!(writes_until_snapshot(&mut r, &mut request), 11);
    // A 50,000-byte snapshot replaced 11 entries of 100 bytes: the next waits for 500.
    let meta = SnapshotMeta {
        index: r.applied_index(),
        epoch: 1,
    };
    r.handle(Event::SnapshotTaken {
        meta,
        bytes: 50_000,
    });
    assert_eq!(r.entries().count(), 0, "the snapshot covers the whole log");
    assert_eq!(writes_until_snapshot(&mut r, &mut request), 501);
    // A small snapshot brings the floor back.
    let meta = SnapshotMeta {
        index: r.applied_index(),
        epoch: 1,
    };
    r.handle(Event::SnapshotTaken { meta, bytes: 300 });
    assert_eq!(writes_until_snapshot(&mut r, &mut request), 11);
}

#[test]
fn lower_epoch_message_is_rejected() {
    let v3 = view(3, 1, &[2]);
    let mut b = replica_in(2, v3.clone(), vec![]);
    assert_eq!(b.role(), Role::Backup);
    let old = Msg::Replicate {
        view: view(2, 0, &[2]),
        prev_index: 0,
        prev_epoch: 0,
        entries: vec![Entry {
            index: 1,
            epoch: 2,
            data: vec![1],
        }],
        commit: 1,
    };
    let out = b.handle(Event::Message { from: 0, msg: old });
    assert_eq!(
        out,
        vec![Command::Send {
            to: 0,
            msg: Msg::Reject { view: v3.clone() }
        }]
    );
    assert_eq!(b.last_index(), 0);
    assert_eq!(b.commit_index(), 0);

    // A primary that learns of a higher epoch steps down at once and fails pending writes.
    let mut p = replica_in(0, view(2, 0, &[2]), vec![]);
    assert_eq!(p.role(), Role::Primary);
    let out = p.handle(Event::ClientWrite {
        request: RequestId(7),
        data: vec![9],
    });
    // Persisted and sent at once: the two fsyncs overlap.
    assert!(matches!(
        &out[..],
        [Command::Persist { .. }, Command::Send { to: 2, .. }]
    ));
    let out = p.handle(Event::Message {
        from: 2,
        msg: Msg::Reject { view: v3.clone() },
    });
    assert!(out.contains(&Command::Reply {
        request: RequestId(7),
        outcome: Outcome::Retry
    }));
    assert!(out.contains(&Command::PersistView(v3.clone())));
    assert_ne!(p.role(), Role::Primary);
    let out = p.handle(Event::ClientWrite {
        request: RequestId(8),
        data: vec![9],
    });
    assert_eq!(
        out,
        vec![Command::Reply {
            request: RequestId(8),
            outcome: Outcome::NotPrimary { hint: Some(1) }
        }]
    );
    // Acks from the old epoch do not count any more.
    let out = p.handle(Event::Message {
        from: 2,
        msg: Msg::Ack {
            epoch: 2,
            matched: 1,
        },
    });
    assert!(!out.iter().any(|c| matches!(c, Command::Reply { .. })));
}

#[test]
fn backup_truncates_divergent_uncommitted_suffix() {
    // r2 holds entries 2..3 from deposed epoch 1; the new primary (epoch 2) has a different 2.
    let e = |index, epoch, d: u8| Entry {
        index,
        epoch,
        data: vec![d],
    };
    let mut b = replica_in(
        2,
        view(2, 1, &[2]),
        vec![e(1, 1, 1), e(2, 1, 2), e(3, 1, 3)],
    );
    let v = view(2, 1, &[2]);
    let out = b.handle(Event::Message {
        from: 1,
        msg: Msg::Replicate {
            view: v.clone(),
            prev_index: 1,
            prev_epoch: 1,
            entries: vec![e(2, 2, 20)],
            commit: 2,
        },
    });
    assert!(out.contains(&Command::Persist {
        entries: vec![e(2, 2, 20)]
    }));
    assert_eq!(b.last_index(), 2);
    assert_eq!(b.entries().last().unwrap().data, vec![20]);
    // Acknowledged only once durable.
    assert!(!out.iter().any(|c| matches!(
        c,
        Command::Send {
            msg: Msg::Ack { matched: 2, .. },
            ..
        }
    )));
    let out = b.handle(Event::Persisted { index: 2, epoch: 2 });
    assert!(out.contains(&Command::Send {
        to: 1,
        msg: Msg::Ack {
            epoch: 2,
            matched: 2
        }
    }));
    // A stale completion of the truncated entry is ignored.
    assert!(b.handle(Event::Persisted { index: 3, epoch: 1 }).is_empty());
}

// ----- view service ---------------------------------------------------------------------

fn ping(from: u32, epoch: u64, synced: &[u32]) -> VsEvent {
    VsEvent::Ping(Ping {
        from,
        incarnation: 1,
        epoch,
        applied: 0,
        synced: synced.to_vec(),
        fence: 0,
    })
}

fn vs3() -> ViewService {
    ViewService::new(VsConfig {
        replicas: 3,
        dead_ticks: 3,
        startup_ticks: 2,
    })
}

fn persisted(cmds: &[VsCommand]) -> bool {
    cmds.iter().any(|c| matches!(c, VsCommand::Persist(_)))
}

#[test]
fn vs_cold_start_waits_for_lowest_id() {
    let mut vs = vs3();
    vs.handle(ping(2, 0, &[]));
    vs.handle(ping(1, 0, &[]));
    assert!(vs.view().is_none(), "waits for replica 0 during startup");
    let cmds = vs.handle(ping(0, 0, &[]));
    assert!(persisted(&cmds));
    assert_eq!(vs.view(), Some(&view(1, 0, &[1, 2])));
    // persist comes before the reply
    assert!(matches!(cmds.last(), Some(VsCommand::Reply { to: 0, .. })));

    let mut vs = vs3();
    vs.handle(ping(2, 0, &[]));
    vs.handle(VsEvent::Tick);
    assert!(vs.view().is_none());
    vs.handle(VsEvent::Tick);
    assert_eq!(
        vs.view(),
        Some(&view(1, 2, &[])),
        "after startup_ticks anyone alive"
    );
}

#[test]
fn vs_changes_view_only_after_ack_and_promotes_only_synced() {
    let mut vs = vs3();
    for r in 0..3 {
        vs.handle(ping(r, 0, &[]));
    }
    // Nobody acked epoch 1: primary 0 dies, no change.
    for _ in 0..5 {
        vs.handle(VsEvent::Tick);
        vs.handle(ping(1, 1, &[]));
        vs.handle(ping(2, 1, &[]));
    }
    assert_eq!(vs.view().unwrap().epoch, 1);
    // Primary comes back and acks, reporting only 2 as synced.
    vs.handle(ping(0, 1, &[2]));
    assert!(vs.acked());
    for _ in 0..5 {
        vs.handle(VsEvent::Tick);
        vs.handle(ping(1, 1, &[]));
        vs.handle(ping(2, 1, &[]));
    }
    // 1 has the lower id but is not synced: 2 is promoted.
    assert_eq!(vs.view(), Some(&view(2, 2, &[1])));
    assert!(!vs.acked());
    // Backup 1 dies before anyone acks: nothing changes; after the ack it is removed.
    for _ in 0..5 {
        vs.handle(VsEvent::Tick);
        vs.handle(ping(2, 1, &[]));
    }
    assert_eq!(vs.view().unwrap().epoch, 2);
    vs.handle(ping(2, 2, &[]));
    assert_eq!(vs.view(), Some(&view(3, 2, &[])));
    // 1 comes back: added unsynced; once synced, hand-over to the lower id.
    vs.handle(ping(2, 3, &[]));
    vs.handle(ping(1, 0, &[]));
    assert_eq!(vs.view(), Some(&view(4, 2, &[1])));
    vs.handle(ping(2, 4, &[]));
    assert_eq!(vs.view().unwrap().epoch, 4, "not synced yet: no hand-over");
    vs.handle(ping(2, 4, &[1]));
    assert_eq!(vs.view(), Some(&view(5, 1, &[2])));
    assert!(vs.synced().contains(&2), "old primary is a synced backup");
}

#[test]
fn vs_new_incarnation_is_never_promoted_on_old_data() {
    let mut vs = vs3();
    for r in 0..3 {
        vs.handle(ping(r, 0, &[]));
    }
    vs.handle(ping(0, 1, &[1, 2]));
    assert_eq!(vs.synced().len(), 2);
    // Replica 1 restarts with a new disk.
    let cmds = vs.handle(VsEvent::Ping(Ping {
        from: 1,
        incarnation: 2,
        epoch: 0,
        applied: 0,
        synced: vec![],
        fence: 0,
    }));
    let lead_from = cmds.iter().find_map(|c| match c {
        VsCommand::Reply { lead_from, .. } => Some(*lead_from),
        _ => None,
    });
    // It is dropped from the synced set and removed from the view.
    assert!(!vs.synced().contains(&1));
    assert_eq!(vs.view(), Some(&view(2, 0, &[2])));
    assert_eq!(
        lead_from,
        Some(2),
        "may not lead epoch 1 (decided before its disk)"
    );
    // The primary's stale report does not make it synced again.
    vs.handle(ping(0, 1, &[1, 2]));
    assert!(!vs.synced().contains(&1));
    // Stale pings of the old incarnation are ignored.
    vs.handle(ping(1, 1, &[]));
    assert_eq!(vs.state().incarnations[&1].0, 2);
}

#[test]
fn fresh_replica_refuses_to_lead_a_view_decided_before_its_restart() {
    let mut r = Replica::recover(1, cfg(1000), DurableState::empty(5));
    let v = view(4, 1, &[0]);
    let out = r.handle(Event::VsReply {
        view: Some(v.clone()),
        lead_from: 5,
    });
    assert!(out.contains(&Command::PersistView(v)));
    r.handle(Event::ViewPersisted { epoch: 4 });
    assert_eq!(r.role(), Role::Idle);
    let out = r.handle(Event::ClientWrite {
        request: RequestId(1),
        data: vec![],
    });
    assert!(matches!(
        &out[..],
        [Command::Reply {
            outcome: Outcome::NotPrimary { .. },
            ..
        }]
    ));
    // A later view is fine.
    let v5 = view(5, 1, &[0]);
    r.handle(Event::VsReply {
        view: Some(v5),
        lead_from: 5,
    });
    r.handle(Event::ViewPersisted { epoch: 5 });
    assert_eq!(r.role(), Role::Primary);
}

// ----- restart fence ---------------------------------------------------------------------

/// The primary sends buy A before persisting it; the backup persists A; the primary
/// crashes before its own write lands and restarts at once (the view service never saw
/// it gone). Then buy B is written, and finally the primary dies for good.
fn primary_restarts_with_a_lost_entry(restart_fence: bool) -> (Cluster, View, View) {
    let mut c = Cluster::new(
        2,
        1,
        Config {
            restart_fence,
            ..cfg(1000)
        },
        VsConfig {
            replicas: 2,
            dead_ticks: 5,
            startup_ticks: 3,
        },
    );
    let before = stabilize(&mut c);
    assert_eq!(before.primary, 0);
    c.client_write(0, 1); // A: queued on 0's disk and already sent to 1
    for m in std::mem::take(&mut c.net) {
        c.deliver(m);
    }
    c.flush_all(1); // A is durable on the backup; its ack is lost with the crash
    c.crash(0, false); // 0's write of A never happened
    c.net.clear();
    c.restart(0);
    let after = stabilize(&mut c);
    assert_eq!(after.primary, 0);
    c.client_write(0, 2); // B
    c.run_rounds(2);
    assert!(
        c.acked.iter().any(|a| a.request == 2),
        "B was acknowledged: {:?}",
        c.replies
    );
    c.crash(0, false);
    c.run_rounds(20);
    assert_eq!(c.serving_primary(), Some(1));
    c.check();
    (c, before, after)
}

#[test]
fn a_restarted_primary_leads_a_new_epoch_and_its_lost_entry_is_overwritten() {
    let (c, before, after) = primary_restarts_with_a_lost_entry(true);
    c.assert_ok();
    assert_eq!(after.epoch, before.epoch + 1, "same members, next epoch");
    assert_eq!(after.backups, before.backups);
    let sm = &c.servers[1].sm;
    assert_eq!(sm.seen.get(&2), Some(&true), "B survives the failover");
    assert_eq!(sm.seen.get(&1), None, "A was never committed");
}

/// The mutation: without the fence the restarted primary re-uses `(1, epoch)` for B while
/// the backup holds A there; the logs diverge and the failover loses B.
#[test]
fn without_the_restart_fence_the_backup_diverges() {
    let (c, before, after) = primary_restarts_with_a_lost_entry(false);
    assert_eq!(after.epoch, before.epoch, "the primary re-leads its epoch");
    assert!(
        c.violations.iter().any(|v| v.contains("different entry"))
            && c.violations.iter().any(|v| v.contains("lost acknowledged")),
        "violations: {:#?}",
        c.violations
    );
}

/// A coordinator leader change while the primary is cut off from everything: the new
/// leader takes over the decided state (`ViewService::take_over`) with none of the old
/// one's soft state. Returns the violations found while the backup is promoted and
/// commits a write.
fn leader_change_while_primary_cut_off(lease_wait: bool) -> Vec<String> {
    let mut c = cluster(2, 10, 1000);
    let v = stabilize(&mut c);
    assert_eq!((v.primary, v.backups.clone()), (0, vec![1]));
    write_many(&mut c, 1, 3);
    // One more round: replica 0 pings and is answered, so it holds a fresh read lease.
    c.run_rounds(1);
    assert!(
        c.servers[0].lease.holds(v.epoch, c.now),
        "primary holds its lease"
    );
    c.isolate(0);
    c.lease_wait = lease_wait;
    c.crash_vs();
    c.restart_vs();
    let mut request = 100;
    for _ in 0..4 * c.lease_ticks() {
        c.run_rounds(1);
        let p = c.vs_view().unwrap().primary;
        if p == 1 && c.replica(1).role() == Role::Primary {
            request += 1;
            c.client_write(1, request);
            c.settle();
            c.check();
        }
    }
    assert!(
        c.acked.iter().any(|a| a.request > 100),
        "the promoted backup committed a write: {:?}",
        c.vs_view()
    );
    c.violations.clone()
}

/// With the wait, the new leader declares the cut-off primary dead only after the longest
/// lease an earlier leader could have granted it has run out: no stale read.
#[test]
fn a_new_coordinator_leader_waits_out_read_leases() {
    let found = leader_change_while_primary_cut_off(true);
    assert!(found.is_empty(), "{found:#?}");
}

/// Mutation: without the wait, the new leader promotes the backup at once, and the old
/// primary, still under the lease the old leader granted, shows a stock older than an
/// acknowledged buy.
#[test]
fn without_the_lease_wait_a_new_leader_allows_a_stale_read() {
    let found = leader_change_while_primary_cut_off(false);
    eprintln!("{found:?}");
    assert!(
        found.iter().any(|v| v.starts_with("stale read")),
        "no stale read without the lease wait: {found:?}"
    );
}
