//! Scenario tests: one replica restarted (disk intact) while the other two
//! run normally must not drive the healthy majority into repeated view
//! changes — also when it can never catch up (its state transfer is lost).
//!
//! A small deterministic harness with the production timings of
//! [`Config::new`]: every message takes 1 ms, every write 1 ms, a client
//! sends a Register to every replica every 10 ms (only the leader orders it).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::kv::KvStore;
use crate::log::Durable;
use crate::message::{Action, Event, Message, Operation, Request};
use crate::{Config, Millis, Replica, ReplicaId, Status, ViewNumber};

enum Ev {
    Deliver { from: ReplicaId, to: ReplicaId, message: Message },
    Persisted { to: ReplicaId, incarnation: u64, seq: u64 },
    Timer { to: ReplicaId, incarnation: u64 },
    Client,
}

struct Harness {
    config: Config,
    now_ms: Millis,
    next_id: u64,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    events: std::collections::BTreeMap<u64, Ev>,
    replicas: Vec<Option<Replica<KvStore>>>,
    durable: Vec<Durable>,
    incarnation: Vec<u64>,
    /// Drop the messages carrying a log or state (NewState, StartView,
    /// DoViewChange) sent to this replica: it can never catch up.
    starve: Option<ReplicaId>,
    /// Drop everything sent to `watch` before this time (its peers have not
    /// reconnected to it yet).
    deaf_until_ms: Millis,
    nonce: u64,
    /// Views entered by replicas other than `watch` (once `watch` is set).
    views_entered: std::collections::BTreeSet<ViewNumber>,
    watch: Option<ReplicaId>,
}

impl Harness {
    fn new() -> Harness {
        let config = Config::new(3);
        let n = config.replica_count;
        let mut h = Harness {
            config,
            now_ms: 0,
            next_id: 0,
            queue: BinaryHeap::new(),
            events: Default::default(),
            replicas: Vec::new(),
            durable: (0..n).map(|r| Durable::initial(r, n)).collect(),
            incarnation: vec![0; n as usize],
            starve: None,
            deaf_until_ms: 0,
            nonce: 0,
            views_entered: Default::default(),
            watch: None,
        };
        for r in 0..n {
            h.replicas.push(None);
            h.start(r);
        }
        h.schedule(10, Ev::Client);
        h
    }

    fn schedule(&mut self, at_ms: Millis, ev: Ev) {
        self.next_id += 1;
        self.queue.push(Reverse((at_ms, self.next_id)));
        self.events.insert(self.next_id, ev);
    }

    fn start(&mut self, r: ReplicaId) {
        let replica = Replica::new(
            self.config.clone(),
            r,
            self.durable[r as usize].clone(),
            KvStore::new(),
            1000 + r as u64 + self.incarnation[r as usize] * 7,
            self.now_ms,
        );
        self.replicas[r as usize] = Some(replica);
        self.drain(r);
    }

    fn kill(&mut self, r: ReplicaId) {
        self.replicas[r as usize] = None;
        self.incarnation[r as usize] += 1;
    }

    fn drain(&mut self, r: ReplicaId) {
        let Some(replica) = self.replicas[r as usize].as_mut() else { return };
        let actions = replica.poll_actions();
        let incarnation = self.incarnation[r as usize];
        for action in actions {
            match action {
                Action::Send { to, message } => {
                    let starved = self.starve == Some(to)
                        && matches!(message, Message::NewState { .. } | Message::StartView { .. } | Message::DoViewChange { .. });
                    let deaf = self.watch == Some(to) && self.now_ms < self.deaf_until_ms;
                    if !starved && !deaf {
                        self.schedule(self.now_ms + 1, Ev::Deliver { from: r, to, message });
                    }
                }
                Action::Persist { seq, write } => {
                    // Durable at once; reported a millisecond later.
                    self.durable[r as usize].apply(&write);
                    self.schedule(self.now_ms + 1, Ev::Persisted { to: r, incarnation, seq });
                }
                Action::Recall { .. } => panic!("no caching clients here"),
                Action::SetTimer { at_ms } => self.schedule(at_ms, Ev::Timer { to: r, incarnation }),
                Action::Reply { .. } => {}
                Action::FetchCheckpoint { .. } => panic!("image checkpoints need no fetch"),
            }
        }
    }

    fn step(&mut self, r: ReplicaId, event: Event) {
        let now = self.now_ms;
        let Some(replica) = self.replicas[r as usize].as_mut() else { return };
        replica.step(now, event);
        self.drain(r);
        let status = self.replicas[r as usize].as_ref().unwrap().status();
        if self.watch.is_some_and(|w| w != r) {
            self.views_entered.insert(status.view);
        }
    }

    fn run_until(&mut self, end_ms: Millis) {
        while let Some(Reverse((at_ms, id))) = self.queue.peek().copied() {
            if at_ms > end_ms {
                break;
            }
            self.queue.pop();
            self.now_ms = at_ms;
            match self.events.remove(&id).unwrap() {
                Ev::Deliver { from, to, message } => self.step(to, Event::Message { from, message }),
                Ev::Persisted { to, incarnation, seq } => {
                    if incarnation == self.incarnation[to as usize] {
                        self.step(to, Event::Persisted { seq });
                    }
                }
                Ev::Timer { to, incarnation } => {
                    if incarnation == self.incarnation[to as usize] {
                        self.step(to, Event::Tick);
                    }
                }
                Ev::Client => {
                    self.nonce += 1;
                    let request =
                        Request { client: 1, session: 0, seq: self.nonce, low_water: 0, epoch: 0, operation: Operation::Register };
                    for r in 0..self.config.replica_count {
                        self.step(r, Event::Request(request.clone()));
                    }
                    self.schedule(self.now_ms + 10, Ev::Client);
                }
            }
        }
        self.now_ms = end_ms;
    }

    fn status(&self, r: ReplicaId) -> crate::StatusReport {
        self.replicas[r as usize].as_ref().unwrap().status()
    }

    fn leader(&self) -> ReplicaId {
        (0..self.config.replica_count)
            .find(|&r| self.replicas[r as usize].is_some() && self.status(r).status == Status::Normal && self.status(r).leader == r)
            .expect("a normal leader")
    }
}

/// Restarts the leader after the other two formed a view and progressed;
/// returns (view of the healthy majority at the restart, the views they
/// went through in the `after_ms` after it, not counting that one).
fn restart_scenario(starve: bool, deaf_ms: Millis, after_ms: Millis) -> (ViewNumber, Vec<ViewNumber>, Harness) {
    let mut h = Harness::new();
    h.run_until(2_000);
    let victim = h.leader();
    h.kill(victim);
    h.run_until(5_000);
    let healthy: Vec<ReplicaId> = (0..3).filter(|&r| r != victim).collect();
    assert!(healthy.iter().all(|&r| h.status(r).status == Status::Normal), "majority not normal before the restart");
    let view_at_restart = h.status(healthy[0]).view;
    h.watch = Some(victim);
    if starve {
        h.starve = Some(victim);
    }
    h.deaf_until_ms = 5_000 + deaf_ms;
    h.start(victim);
    h.run_until(5_000 + after_ms);
    let entered = h.views_entered.iter().copied().filter(|&v| v > view_at_restart).collect();
    (view_at_restart, entered, h)
}

#[test]
fn fresh_cluster_settles_in_its_first_views() {
    let mut h = Harness::new();
    h.run_until(3_000);
    let views: Vec<_> = (0..3).map(|r| h.status(r).view).collect();
    assert!(views.iter().all(|&v| v <= 2), "fresh cluster went through views {views:?}");
    assert!((0..3).all(|r| h.status(r).status == Status::Normal));
}

#[test]
fn restarted_replica_causes_at_most_two_view_changes() {
    let (before, entered, h) = restart_scenario(false, 0, 10_000);
    // Admitting it back as a member costs one view change (Join).
    assert!(entered.len() <= 2, "view {before}, then views {entered:?} after one restart");
    // And it caught up.
    let victim = h.watch.unwrap();
    let leader = h.leader();
    assert_eq!(h.status(victim).status, Status::Normal);
    assert!(h.status(victim).commit_op + 20 >= h.status(leader).commit_op);
}

#[test]
fn replica_that_cannot_catch_up_does_not_disrupt_the_majority() {
    let (before, entered, h) = restart_scenario(true, 0, 20_000);
    assert!(entered.len() <= 2, "view {before}, then views {entered:?} while the restarted replica starves");
    // The majority keeps making progress.
    let leader = h.leader();
    assert!(h.status(leader).commit_op > 2_000, "commit {}", h.status(leader).commit_op);
}

#[test]
fn restarted_replica_that_hears_nothing_for_a_while_does_not_disrupt() {
    // Like a restarted process whose peers take a while to reconnect: it
    // sends, but hears nothing for 3 s.
    let (before, entered, h) = restart_scenario(false, 3_000, 10_000);
    assert!(entered.len() <= 2, "view {before}, then views {entered:?} after one restart");
    let victim = h.watch.unwrap();
    assert_eq!(h.status(victim).status, Status::Normal);
}
