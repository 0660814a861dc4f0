//! Which nodes are down, judged on this agent's own monotonic clock.
//!
//! A heartbeat's value is its writer's wall clock, and two machines' wall clocks
//! may be seconds apart (or stepped by NTP): comparing another node's value with
//! this node's clock would call a live node with a slow clock dead, and keep a
//! dead one with a fast clock alive. So the value is only ever compared with
//! itself: a node is alive while its value keeps changing, and down once it has
//! not changed for [`DOWN_AFTER`] of this agent's [`Instant`]s.

use super::Agent;
use crate::state::ClusterState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node whose heartbeat has not changed for this long is down.
pub const DOWN_AFTER: Duration = Duration::from_secs(4);

/// What this agent has seen of every node's heartbeat.
#[derive(Debug)]
pub struct Judge {
    /// When judging began: a node never seen beating has had since then.
    started: Instant,
    /// When the store last became readable again after an outage: every
    /// node's beats failed too, so each gets [`DOWN_AFTER`] from then.
    back_at: Option<Instant>,
    /// By node: its last heartbeat value, and when (here) it was first seen.
    seen: BTreeMap<String, (u64, Instant)>,
}

impl Judge {
    pub fn new(now: Instant) -> Self {
        Judge {
            started: now,
            back_at: None,
            seen: BTreeMap::new(),
        }
    }

    /// The store answers again after failing.
    pub fn store_back(&mut self, now: Instant) {
        self.back_at = Some(now);
    }

    /// Takes one reading of the heartbeats. A record the store dropped (an etcd
    /// lease that ran out) is no beat: the node keeps its last change.
    pub fn observe(&mut self, beats: &BTreeMap<String, u64>, now: Instant) {
        for (node, &value) in beats {
            match self.seen.get_mut(node) {
                Some((v, _)) if *v == value => {}
                Some(e) => *e = (value, now),
                None => {
                    self.seen.insert(node.clone(), (value, now));
                }
            }
        }
    }

    /// Forgets nodes no longer in the cluster (not before a state with nodes
    /// was read: the agent's own node is always in one).
    pub fn retain(&mut self, st: &ClusterState) {
        if !st.nodes.is_empty() {
            self.seen.retain(|n, _| st.nodes.contains_key(n));
        }
    }

    /// The nodes (other than `me`, and but for external peers, which run no
    /// agent) whose heartbeat has not changed for more than `down_after`, counting
    /// from when judging began or the store came back if later.
    pub fn down(
        &self,
        st: &ClusterState,
        me: &str,
        now: Instant,
        down_after: Duration,
    ) -> BTreeSet<String> {
        let floor = self.back_at.map_or(self.started, |b| b.max(self.started));
        st.nodes
            .values()
            .filter(|n| !n.external && n.name != me)
            .filter(|n| {
                let last = self
                    .seen
                    .get(&n.name)
                    .map_or(floor, |(_, t)| (*t).max(floor));
                now.saturating_duration_since(last) > down_after
            })
            .map(|n| n.name.clone())
            .collect()
    }

    /// How long ago (here) each node's heartbeat last changed.
    pub fn ages(&self, now: Instant) -> BTreeMap<String, Duration> {
        self.seen
            .iter()
            .map(|(n, (_, t))| (n.clone(), now.saturating_duration_since(*t)))
            .collect()
    }
}

/// The value this agent writes as its heartbeat: its Unix ms (shifted by the
/// test-only `--test-heartbeat-skew-ms`), and always more than the last, so
/// every beat is a change even if the wall clock stands still or steps back.
#[derive(Debug, Default)]
pub struct Beater {
    last: u64,
    skew_ms: i64,
}

impl Beater {
    pub fn new(skew_ms: i64) -> Self {
        Beater { last: 0, skew_ms }
    }

    pub fn next(&mut self, unix_ms: u64) -> u64 {
        let v = unix_ms
            .saturating_add_signed(self.skew_ms)
            .max(self.last + 1);
        self.last = v;
        v
    }
}

impl Agent {
    /// Heartbeats this node every second and watches the others': a node whose
    /// heartbeat has not changed for 4 s (on this agent's monotonic clock, see
    /// [`Judge`]) is down, and its tasks leave this node's balancer and DNS
    /// until it beats again. While the store cannot be read the last view
    /// stands; once it can again, every node gets 4 s from then to beat (their
    /// beats failed too) before it counts as down.
    pub async fn liveness(self: Arc<Self>) {
        const EVERY: Duration = Duration::from_secs(1);
        let mut failing = false;
        let mut beater = Beater::new(self.heartbeat_skew_ms);
        loop {
            let (s, node) = (self.store.clone(), self.node.clone());
            let value = beater.next(crate::state::model::unix_now_ms());
            let beats = tokio::task::spawn_blocking(move || {
                let beat = s.heartbeat(&node, value);
                let beats = s.heartbeats()?;
                beat.map(|()| beats)
            })
            .await;
            match beats {
                Ok(Ok(beats)) => {
                    let now = std::time::Instant::now();
                    if std::mem::take(&mut failing) {
                        if let Ok(mut j) = self.judge.lock() {
                            j.store_back(now);
                        }
                        tracing::info!(
                            "store reachable again: nodes get {:?} to heartbeat",
                            DOWN_AFTER
                        );
                    }
                    self.judge_liveness(&beats, now).await;
                }
                _ => {
                    if !failing {
                        tracing::warn!("heartbeat failed: keeping the last liveness view");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    }

    /// Applies one reading of the heartbeats.
    async fn judge_liveness(
        &self,
        beats: &std::collections::BTreeMap<String, u64>,
        now: std::time::Instant,
    ) {
        let st = self.last_state();
        let down = match self.judge.lock() {
            Ok(mut j) => {
                j.observe(beats, now);
                j.retain(&st);
                j.down(&st, &self.node, now, DOWN_AFTER)
            }
            Err(_) => return,
        };
        let changed = match self.down.lock() {
            Ok(mut d) if *d != down => {
                tracing::info!(down = ?down, "node liveness changed");
                *d = down;
                true
            }
            _ => false,
        };
        if changed {
            let ports = self.ports.lock().await;
            self.publish(&st, &ports);
        }
    }

    /// Each node's liveness as this agent sees it: the nodes it counts down, and
    /// how long ago (on this agent's clock) each one's heartbeat last changed.
    pub fn liveness_view(
        &self,
    ) -> (
        std::collections::BTreeSet<String>,
        std::collections::BTreeMap<String, Duration>,
    ) {
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        let ages = self
            .judge
            .lock()
            .map(|j| j.ages(std::time::Instant::now()))
            .unwrap_or_default();
        (down, ages)
    }

    /// Waits until a dataplane worker stops on its own (it panicked, or its
    /// poll failed); returns which and why, so that whoever runs the agent
    /// stops it rather than let it heartbeat on with a dead forwarder.
    pub async fn dead_worker(&self) -> (usize, String) {
        loop {
            if let Some(dead) = self.worker.stopped_worker() {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Node;

    fn state(names: &[&str]) -> ClusterState {
        let mut st = ClusterState::default();
        for (i, n) in names.iter().enumerate() {
            let node = Node::new(n, format!("192.0.2.{}", i + 1).parse().unwrap());
            st.nodes.insert(n.to_string(), node);
        }
        st
    }

    fn names(s: BTreeSet<String>) -> Vec<String> {
        s.into_iter().collect()
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Each node beats once a second from a clock of its own: one 5 s behind
    /// this judge's, one 5 s ahead, one an hour behind. All stay up, however far
    /// their values are from this node's clock; a fourth stops beating and is
    /// down once its value has stood still for more than 4 s.
    #[test]
    fn skewed_clocks_keep_nodes_up_and_a_still_value_is_down() {
        let st = state(&["me", "behind", "ahead", "hour", "stops"]);
        let t0 = Instant::now();
        let wall0: u64 = 1_700_000_000_000;
        let mut j = Judge::new(t0);
        let mut beaters: BTreeMap<&str, Beater> = [
            ("behind", -5_000),
            ("ahead", 5_000),
            ("hour", -3_600_000),
            ("stops", 0),
        ]
        .into_iter()
        .map(|(n, skew)| (n, Beater::new(skew)))
        .collect();
        let mut beats = BTreeMap::new();
        for s in 0..=10u64 {
            let now = t0 + Duration::from_secs(s);
            for (n, b) in beaters.iter_mut() {
                if *n == "stops" && s > 2 {
                    continue;
                }
                beats.insert(n.to_string(), b.next(wall0 + s * 1000));
            }
            j.observe(&beats, now);
            let down = j.down(&st, "me", now, DOWN_AFTER);
            // "stops" beat last at 2 s: up through 6 s, down after
            if s <= 6 {
                assert!(down.is_empty(), "at {s} s: {down:?}");
            } else {
                assert_eq!(names(down), ["stops"], "at {s} s");
            }
        }
        assert_eq!(j.ages(t0 + Duration::from_secs(10))["stops"], MS(8_000));
        assert_eq!(j.ages(t0 + Duration::from_secs(10))["ahead"], MS(0));
    }

    /// The old judge compared values with this node's clock: with a beat 5 s in
    /// the past that said down at once. This one never reads the value as a time.
    #[test]
    fn a_value_far_in_the_past_or_future_is_no_age() {
        let st = state(&["me", "a", "b"]);
        let t0 = Instant::now();
        let mut j = Judge::new(t0);
        let beats = BTreeMap::from([("a".to_string(), 1), ("b".to_string(), u64::MAX)]);
        j.observe(&beats, t0);
        assert!(j.down(&st, "me", t0 + MS(3_900), DOWN_AFTER).is_empty());
        // neither changed since: both down once 4 s have passed
        assert_eq!(
            names(j.down(&st, "me", t0 + MS(4_100), DOWN_AFTER)),
            ["a", "b"]
        );
    }

    #[test]
    fn silent_or_missing_nodes_are_down_but_not_right_after_the_store_returns() {
        let st = state(&["me", "a", "b", "c"]);
        let t0 = Instant::now();
        let mut j = Judge::new(t0);
        let mut beats = BTreeMap::from([("a".to_string(), 10), ("b".to_string(), 20)]);
        j.observe(&beats, t0);
        // a beats on; b goes silent; c never beats; me is never judged
        for s in 1..=5 {
            beats.insert("a".into(), 10 + s);
            j.observe(&beats, t0 + Duration::from_secs(s));
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(names(j.down(&st, "me", now, DOWN_AFTER)), ["b", "c"]);
        // the store came back: the others' beats failed during the outage
        // too, so nobody is down until they have had 4 s to beat again
        let back = t0 + Duration::from_secs(20);
        j.store_back(back);
        assert!(j.down(&st, "me", back + MS(1_000), DOWN_AFTER).is_empty());
        // once that window has passed, silence counts again (a's last change
        // was 15 s before the store came back)
        assert_eq!(
            names(j.down(&st, "me", back + MS(4_500), DOWN_AFTER)),
            ["a", "b", "c"]
        );
        // an empty state (none read yet) forgets nobody; one without b does
        j.retain(&ClusterState::default());
        assert_eq!(j.ages(back).len(), 2);
        j.retain(&state(&["me", "a"]));
        assert_eq!(j.ages(back).keys().collect::<Vec<_>>(), ["a"]);
        // a dropped record is no beat and no change: a is still down
        beats.remove("a");
        j.observe(&beats, back + MS(4_600));
        assert!(j
            .down(&st, "me", back + MS(4_600), DOWN_AFTER)
            .contains("a"));
    }

    #[test]
    fn a_beater_always_moves_even_when_its_clock_steps_back() {
        let mut b = Beater::new(0);
        assert_eq!(b.next(1_000), 1_000);
        assert_eq!(b.next(1_000), 1_001);
        assert_eq!(b.next(500), 1_002);
        assert_eq!(b.next(5_000), 5_000);
        let mut b = Beater::new(-5_000);
        assert_eq!(b.next(10_000), 5_000);
        assert_eq!(b.next(2_000), 5_001);
    }
}
