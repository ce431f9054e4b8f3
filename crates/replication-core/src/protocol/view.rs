//! Views and epochs: a replica learns a view from the view service or a peer, persists
//! it ([`Command::PersistView`]) and only then activates it, taking the role the view
//! gives it; [`Replica::may_lead`] holds the rules on when it may lead (view service
//! heard, restart fence, fresh disk), and every ping to the view service is built here.

use super::{Command, Epoch, Replica, Role, View};
use crate::viewservice::Ping;

impl Replica {
    pub(super) fn may_lead(&self, epoch: Epoch) -> bool {
        self.vs_confirmed
            && epoch > self.fence
            && (!self.fresh || self.lead_from.is_some_and(|f| epoch >= f))
    }

    pub(super) fn ping(&self, out: &mut Vec<Command>) {
        let epoch = match self.role {
            Role::Primary | Role::Backup if self.pending_view.is_none() => self.epoch(),
            _ => 0,
        };
        out.push(Command::PingVs(Ping {
            from: self.id,
            incarnation: self.incarnation,
            epoch,
            applied: self.applied,
            synced: self.synced_backups(),
            fence: self.fence,
        }));
    }

    /// Learn a view (from the VS or a peer); persist it before acting in it.
    pub(super) fn adopt_view(&mut self, v: View, out: &mut Vec<Command>) {
        if v.epoch <= self.known_epoch() {
            return;
        }
        if self.role == Role::Primary {
            if !self.config.fencing && v.primary != self.id {
                return; // mutation: never step down
            }
            self.step_down(out);
        }
        self.role = Role::Idle;
        self.pending_view = Some(v.clone());
        out.push(Command::PersistView(v));
    }

    pub(super) fn activate(&mut self, v: View, out: &mut Vec<Command>) {
        let epoch_changed = self.epoch() != v.epoch;
        self.view = Some(v.clone());
        if epoch_changed {
            self.matched = self.commit;
            self.acked = 0;
            self.follow = Some((v.primary, v.epoch));
        }
        if v.primary == self.id && self.may_lead(v.epoch) {
            self.become_primary(out);
        } else if v.is_backup(self.id) {
            self.role = Role::Backup;
            if epoch_changed {
                self.last_primary_contact = None;
                self.primary_commit = 0;
            }
        } else {
            self.role = Role::Idle;
        }
        self.ping(out);
    }

    pub(super) fn on_vs_reply(
        &mut self,
        view: Option<View>,
        lead_from: Epoch,
        out: &mut Vec<Command>,
    ) {
        if lead_from != Epoch::MAX {
            self.vs_confirmed = true;
            if self.fresh {
                self.lead_from = Some(lead_from);
            }
            let lead_now = self.role == Role::Idle
                && self.pending_view.is_none()
                && view.as_ref().map(|v| v.epoch) == self.view.as_ref().map(|v| v.epoch)
                && self
                    .view
                    .as_ref()
                    .is_some_and(|v| v.primary == self.id && self.may_lead(v.epoch));
            if lead_now {
                self.become_primary(out);
                self.ping(out);
            }
        }
        if let Some(v) = view {
            self.adopt_view(v, out);
        }
    }
}
