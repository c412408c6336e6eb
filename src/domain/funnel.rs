//! Ordered funnels, per person: how far one person got through steps A → B → C within a window.
//!
//! Pure: the store gathers each person's matching events, this decides. As in PostHog's ordered
//! funnels, other events may come between the steps, each step must come at or after the one
//! before it, the whole sequence must fit in the window counted from step A, and one event
//! counts for at most one step.

/// Most steps a funnel may have.
pub const MAX_STEPS: usize = 20;

/// One event of a person that matches one or more steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepEvent {
    /// Event time, ms since the epoch.
    pub timestamp_ms: i64,
    /// Log position: orders events of the same millisecond as they arrived.
    pub seq: u64,
    /// Bit `k` set when the event's name is step `k`.
    pub steps: u32,
}

/// The index of the furthest step the person reached (0 for step A only), or `None` when it
/// never did step A. `events` may be in any order; it is sorted here: by time, and events of
/// the same millisecond by their earliest step, then as they arrived. A step may come at the
/// same time as the one before it, whichever arrived first (a backend and a browser can send
/// the same millisecond).
pub fn furthest_step(events: &mut [StepEvent], steps: usize, window_ms: i64) -> Option<usize> {
    let steps = steps.min(MAX_STEPS);
    events.sort_unstable_by_key(|e| (e.timestamp_ms, e.steps.trailing_zeros(), e.seq));
    // latest[k]: the latest start (step A's time) of a sequence that has reached step k. A later
    // start always leaves more of the window, so it is the only one worth keeping.
    let mut latest: [Option<i64>; MAX_STEPS] = [None; MAX_STEPS];
    for e in events.iter() {
        // Highest step first, so that one event never advances two steps.
        for k in (0..steps).rev() {
            if e.steps & (1 << k) == 0 {
                continue;
            }
            let start = match k {
                0 => Some(e.timestamp_ms),
                _ => latest[k - 1].filter(|s| e.timestamp_ms - s <= window_ms),
            };
            if start.is_some() && start > latest[k] {
                latest[k] = start;
            }
        }
    }
    (0..steps).rev().find(|k| latest[*k].is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: i64, steps: u32) -> StepEvent {
        StepEvent {
            timestamp_ms: t,
            seq: t as u64,
            steps,
        }
    }

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 4;

    #[test]
    fn steps_count_in_order_only() {
        assert_eq!(
            furthest_step(&mut [ev(1, A), ev(2, B), ev(3, C)], 3, 10),
            Some(2)
        );
        assert_eq!(
            furthest_step(&mut [ev(1, B), ev(2, A), ev(3, C)], 3, 10),
            Some(0)
        );
        assert_eq!(furthest_step(&mut [ev(1, B), ev(2, C)], 3, 10), None);
    }

    #[test]
    fn the_window_counts_from_the_latest_useful_start() {
        // The first A is too early for C, the second A is not.
        let mut e = [ev(0, A), ev(50, A), ev(55, B), ev(100, C)];
        assert_eq!(furthest_step(&mut e, 3, 50), Some(2));
        assert_eq!(furthest_step(&mut [ev(0, A), ev(61, B)], 2, 60), Some(0));
    }

    #[test]
    fn a_step_at_the_same_millisecond_as_the_one_before_counts_whatever_arrived_first() {
        let same = |steps, seq| StepEvent {
            timestamp_ms: 7,
            seq,
            steps,
        };
        assert_eq!(
            furthest_step(&mut [same(C, 1), same(B, 2), same(A, 3)], 3, 10),
            Some(2)
        );
        // Still one step per event.
        assert_eq!(furthest_step(&mut [same(A | B, 1)], 2, 10), Some(0));
        // A later step before an earlier one is still out of order.
        assert_eq!(furthest_step(&mut [ev(1, B), ev(2, A)], 2, 10), Some(0));
    }

    #[test]
    fn one_event_is_one_step_even_when_steps_repeat() {
        assert_eq!(furthest_step(&mut [ev(1, A | B)], 2, 10), Some(0));
        assert_eq!(
            furthest_step(&mut [ev(1, A | B), ev(2, A | B)], 2, 10),
            Some(1)
        );
    }
}
