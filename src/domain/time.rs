//! When an event happened: spec §5's "the event's timestamp", read as PostHog's capture reads
//! it. A device's clock can be wrong; the request says what the device thought the time was
//! when it sent (`sent_at`), so the difference from the server's clock at arrival is taken off
//! the event's own timestamp. Pure: the caller passes the arrival time.

use serde_json::Value;

/// An event more than this far in the future is taken as happening on arrival (PostHog's
/// `FUTURE_EVENT_HOURS_CUTOFF_MILLIS`: 23 hours).
pub const FUTURE_CUTOFF_MS: i64 = 23 * 3_600_000;

/// A measured clock skew smaller than this is left alone, since one request cannot tell a
/// device's wrong clock from the time the request spent in transit (PostHog's
/// `CLOCK_SKEW_DEADBAND_MS`: 150 s); beyond it, only the excess is corrected.
pub const SKEW_DEADBAND_MS: i64 = 150_000;

/// 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z: an event time outside is not a date
/// PostHog writes, and becomes the epoch, as PostHog's capture makes it.
const YEAR_0_MS: i64 = -62_167_219_200_000;
const YEAR_10000_MS: i64 = 253_402_300_800_000;

/// What a request says of time: when it arrived, and when the client says it sent it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Arrival on the server's clock, in ms since the epoch (also stamps normalisation's
    /// warnings, until the event's decision stamps them with its own time).
    pub now_ms: i64,
    /// The request's `sent_at` on the client's clock (posthog-python and posthog-node put it
    /// in the body; posthog-js sends the `_` query parameter), when it had a readable one.
    pub sent_at_ms: Option<i64>,
}

/// A time as an event's `timestamp` or a request's `sent_at` is written: RFC 3339 (also with
/// an hours-only offset, `2025-09-17T14:05:04.805+03`), a date and time without an offset
/// taken as UTC (with `T` or a space between), or a date alone (its midnight, UTC).
pub fn parse_time_ms(s: &str) -> Option<i64> {
    if let Some(ms) = super::normalize::parse_rfc3339_ms(s) {
        return Some(ms);
    }
    let b = s.as_bytes();
    let hours_only = b.len() > 3
        && matches!(b[b.len() - 3], b'+' | b'-')
        && b[b.len() - 2..].iter().all(u8::is_ascii_digit)
        && s.contains('T');
    if hours_only {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&format!("{s}:00")) {
            return Some(t.timestamp_millis());
        }
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(t.and_utc().timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

/// The part of a measured skew (`sent_at` minus arrival) that is taken off an event's
/// timestamp: what exceeds [`SKEW_DEADBAND_MS`], with the measurement's sign.
pub fn correctable_skew_ms(measured_ms: i64) -> i64 {
    measured_ms.signum() * (measured_ms.saturating_abs() - SKEW_DEADBAND_MS).max(0)
}

/// When an event happened, in ms since the epoch; `None` when it says nothing readable (no
/// `timestamp` that parses and no `offset`), which means the time it is processed.
///
/// - A `timestamp` that parses is corrected by the client's clock skew when `sent_at_ms` is
///   known ([`correctable_skew_ms`]).
/// - An integer `offset` (ms before sending, as older posthog-js sends) means arrival minus
///   it, and wins over `timestamp`, as in PostHog.
/// - More than [`FUTURE_CUTOFF_MS`] after arrival is taken as arrival.
/// - Outside the years 0 to 9999, the epoch.
pub fn event_time_ms(
    timestamp: Option<&Value>,
    offset: Option<&Value>,
    sent_at_ms: Option<i64>,
    now_ms: i64,
) -> Option<i64> {
    let parsed = timestamp.and_then(Value::as_str).and_then(parse_time_ms);
    let mut at = match (parsed, sent_at_ms) {
        (Some(t), Some(sent)) => {
            Some(t.saturating_sub(correctable_skew_ms(sent.saturating_sub(now_ms))))
        }
        (t, _) => t,
    };
    if let Some(offset) = offset.and_then(Value::as_i64) {
        at = Some(now_ms.saturating_sub(offset));
    }
    let at = at?;
    Some(if at.saturating_sub(now_ms) > FUTURE_CUTOFF_MS {
        now_ms
    } else if (YEAR_0_MS..YEAR_10000_MS).contains(&at) {
        at
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    fn at(ts: &str, sent_at: Option<&str>, now: &str) -> Option<i64> {
        event_time_ms(Some(&json!(ts)), None, sent_at.map(ms), ms(now))
    }

    #[test]
    fn the_forms_a_timestamp_is_written_in() {
        let noon = ms("2025-09-17T11:05:04.805Z");
        for s in [
            "2025-09-17T11:05:04.805Z",
            "2025-09-17T14:05:04.805+03:00",
            "2025-09-17T14:05:04.805+03",
            "2025-09-17T06:05:04.805-05",
            "2025-09-17T11:05:04.805",
            "2025-09-17 11:05:04.805",
        ] {
            assert_eq!(parse_time_ms(s), Some(noon), "{s}");
        }
        assert_eq!(
            parse_time_ms("2023-01-01"),
            Some(ms("2023-01-01T00:00:00Z"))
        );
        for s in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-01-01:00",
            "1672574400000",
        ] {
            assert_eq!(parse_time_ms(s), None, "{s}");
        }
    }

    #[test]
    fn a_wrong_client_clock_is_corrected_beyond_the_deadband() {
        let now = "2023-01-01T12:00:00Z";
        // The device's clock is 10 minutes ahead: its events are moved back by 10 minutes
        // less the deadband of 150 s.
        assert_eq!(
            at("2023-01-01T11:00:00Z", Some("2023-01-01T12:10:00Z"), now),
            Some(ms("2023-01-01T10:52:30Z"))
        );
        // 10 minutes behind: moved forward.
        assert_eq!(
            at("2023-01-01T11:00:00Z", Some("2023-01-01T11:50:00Z"), now),
            Some(ms("2023-01-01T11:07:30Z"))
        );
        // 40 s in transit reads as a device 40 s behind: within the deadband, not moved.
        assert_eq!(
            at("2023-01-01T11:00:00Z", Some("2023-01-01T11:59:20Z"), now),
            Some(ms("2023-01-01T11:00:00Z"))
        );
        // No sent_at: as written.
        assert_eq!(
            at("2023-01-01T11:00:00Z", None, now),
            Some(ms("2023-01-01T11:00:00Z"))
        );
    }

    #[test]
    fn the_correction_keeps_only_what_exceeds_the_deadband() {
        for (measured, kept) in [
            (0, 0),
            (149_000, 0),
            (-149_000, 0),
            (151_000, 1_000),
            (-151_000, -1_000),
            (7_200_000, 7_200_000 - SKEW_DEADBAND_MS),
            (i64::MIN, i64::MIN + 1 + SKEW_DEADBAND_MS),
        ] {
            assert_eq!(correctable_skew_ms(measured), kept, "{measured}");
        }
    }

    #[test]
    fn an_offset_counts_back_from_arrival_and_wins_over_the_timestamp() {
        let now = ms("2026-12-03T10:00:00Z");
        let hour_before = Some(ms("2026-12-03T09:00:00Z"));
        assert_eq!(
            event_time_ms(None, Some(&json!(3_600_000)), None, now),
            hour_before
        );
        assert_eq!(
            event_time_ms(
                Some(&json!("2020-01-01T00:00:00Z")),
                Some(&json!(3_600_000)),
                None,
                now
            ),
            hour_before
        );
        // Not an integer: not an offset.
        assert_eq!(
            event_time_ms(None, Some(&json!("3600000")), None, now),
            None
        );
        assert_eq!(event_time_ms(None, Some(&json!(1.5)), None, now), None);
    }

    #[test]
    fn the_future_beyond_23_hours_is_arrival_and_beyond_year_9999_the_epoch() {
        let now = "2026-12-03T10:00:00Z";
        assert_eq!(at("2099-01-01T00:00:00Z", None, now), Some(ms(now)));
        assert_eq!(
            at("2026-12-04T08:59:59Z", None, now),
            Some(ms("2026-12-04T08:59:59Z")),
            "22 h 59 min ahead stays"
        );
        // A sent_at of year 9999 moves a 2026 timestamp before year 0.
        assert_eq!(
            at("2026-12-03T10:00:00Z", Some("9999-12-31T00:00:00Z"), now),
            Some(0)
        );
        // Nothing readable: the time of processing, decided later.
        assert_eq!(at("not a time", None, now), None);
        assert_eq!(event_time_ms(None, None, Some(ms(now)), ms(now)), None);
    }
}
