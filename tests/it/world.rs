//! A tiny engine over `MemState` for domain tests: normalise, decide, apply, in order.

use idstitch::domain::memstate::MemState;
use idstitch::domain::{
    apply_entry, decide, lookups, normalize, Change, Ctx, Decision, Entry, Person, ProjectId, Seq,
    WarningLimiter,
};
use serde_json::Value;

/// Fixed ingestion time of every test event.
pub const NOW: i64 = 1_767_225_600_000;

/// Project 1.
pub const P: ProjectId = ProjectId(1);

/// State plus everything decide needs between events.
#[derive(Default)]
pub struct World {
    pub state: MemState,
    pub seq: u64,
    pub limiter: WarningLimiter,
    pub merge_limit: Option<u64>,
    pub max_ids: Option<u64>,
    pub log: Vec<(Seq, Entry)>,
}

impl World {
    /// Send one event (as an SDK would) and return the decision.
    pub fn send(&mut self, event: Value) -> Decision {
        let ev = normalize(&event, NOW).expect("test events are valid");
        let (into, other) = lookups(&ev);
        let into_p = self.state.person_of(P, &into).cloned();
        let other_p = other.and_then(|o| self.state.person_of(P, &o).cloned());
        let ctx = Ctx {
            project: P,
            now_ms: NOW,
            merge_limit: self.merge_limit,
            max_ids: self.max_ids,
            into: into_p.as_ref(),
            other: other_p.as_ref(),
            limiter: &mut self.limiter,
        };
        let decision = decide(&ev, ctx);
        if !decision.changes.is_empty() {
            self.commit(ev.uuid.clone(), decision.changes.clone());
        }
        decision
    }

    /// Log and apply an operator action's changes (`decide_split`, `decide_delete`).
    pub fn admin(&mut self, changes: Vec<Change>) {
        self.commit(None, changes);
    }

    /// Log one entry under the next seq and apply it.
    fn commit(&mut self, cause: Option<String>, changes: Vec<Change>) {
        self.seq += 1;
        let entry = Entry {
            project: P,
            at_ms: NOW,
            cause,
            changes,
        };
        apply_entry(&mut self.state, Seq(self.seq), &entry);
        self.log.push((Seq(self.seq), entry));
    }

    /// The person of a distinct ID.
    pub fn person(&self, did: &str) -> Option<&Person> {
        self.state.person_of(P, did)
    }

    /// Every warning recorded so far, as (type, details).
    pub fn warnings(&self) -> Vec<(String, Value)> {
        self.log
            .iter()
            .flat_map(|(_, e)| e.changes.iter())
            .filter_map(|c| match c {
                Change::WarningRecorded { warning } => Some((
                    warning.kind.as_str().to_string(),
                    Value::Object(warning.details.0.clone()),
                )),
                _ => None,
            })
            .collect()
    }

    /// Number of persons.
    pub fn persons(&self) -> usize {
        self.state.persons.len()
    }
}
