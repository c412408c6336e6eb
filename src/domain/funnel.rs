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

/// Most events of one millisecond whose every order is tried ([`furthest_step`]); a larger
/// group (5! = 120 orders) is taken in one order, earliest step first.
const MAX_ORDERED_GROUP: usize = 5;

/// The index of the furthest step the person reached (0 for step A only), or `None` when it
/// never did step A. `events` may be in any order; it is sorted here, by time. Events of the
/// same millisecond may count in any order (a backend and a browser can send the same
/// millisecond, and which arrived first says nothing of which happened first): every order of
/// such a group is tried, and for each step the best is kept. Each step's best is a sequence
/// one order makes, and later events extend it alone, so the best of each is reachable.
pub fn furthest_step(events: &mut [StepEvent], steps: usize, window_ms: i64) -> Option<usize> {
    let steps = steps.min(MAX_STEPS);
    events.sort_unstable_by_key(|e| (e.timestamp_ms, e.steps.trailing_zeros(), e.seq));
    // latest[k]: the latest start (step A's time) of a sequence that has reached step k. A later
    // start always leaves more of the window, so it is the only one worth keeping.
    let mut latest: Latest = [None; MAX_STEPS];
    for group in events.chunk_by(|a, b| a.timestamp_ms == b.timestamp_ms) {
        if group.len() == 1 || group.len() > MAX_ORDERED_GROUP {
            group
                .iter()
                .for_each(|e| advance(&mut latest, e, steps, window_ms));
            continue;
        }
        let before = latest;
        let mut order: Vec<usize> = (0..group.len()).collect();
        each_order(&mut order, group.len(), &mut |order| {
            let mut l = before;
            for &i in order {
                advance(&mut l, &group[i], steps, window_ms);
            }
            for (best, got) in latest.iter_mut().zip(l) {
                *best = (*best).max(got);
            }
        });
    }
    (0..steps).rev().find(|k| latest[*k].is_some())
}

type Latest = [Option<i64>; MAX_STEPS];

/// Let one event count for one step, the highest it can advance.
fn advance(latest: &mut Latest, e: &StepEvent, steps: usize, window_ms: i64) {
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

/// Call `f` with every order of `items[..n]` (Heap's algorithm).
fn each_order(items: &mut [usize], n: usize, f: &mut impl FnMut(&[usize])) {
    if n <= 1 {
        f(items);
        return;
    }
    for i in 0..n - 1 {
        each_order(items, n - 1, f);
        items.swap(if n % 2 == 0 { i } else { 0 }, n - 1);
    }
    each_order(items, n - 1, f);
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
    fn a_name_at_two_steps_counts_at_the_later_one_in_the_same_millisecond() {
        // helper-36's case: steps other, purchase, other; purchase and the second other in
        // the same millisecond, in that arrival order.
        let (other, purchase) = (A | C, B);
        let at = |t, steps, seq| StepEvent {
            timestamp_ms: t,
            seq,
            steps,
        };
        let mut e = [at(0, other, 1), at(5, purchase, 2), at(5, other, 3)];
        assert_eq!(furthest_step(&mut e, 3, 100), Some(2));
        // One event still counts once: other and purchase alone in one millisecond reach
        // step B, not C.
        let mut e = [at(5, other, 1), at(5, purchase, 2)];
        assert_eq!(furthest_step(&mut e, 3, 100), Some(1));
    }

    #[test]
    fn every_order_of_a_small_group_is_tried() {
        let mut seen = Vec::new();
        each_order(&mut [0, 1, 2], 3, &mut |o| seen.push(o.to_vec()));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6);
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
