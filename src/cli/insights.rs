//! `idstitch insights unique|funnel`: insights counted per person, printed as a table.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::project::{call, enc};

/// Insight subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum InsightsCmd {
    /// How many distinct persons sent an event.
    Unique {
        /// Project token or id.
        project: String,
        /// The event name.
        #[arg(long)]
        event: String,
        /// Count distinct IDs instead of persons (the naive count).
        #[arg(long)]
        by_distinct_id: bool,
        #[command(flatten)]
        range: Range,
    },
    /// An ordered funnel: persons who did each step after the previous one, within a window.
    Funnel {
        /// Project token or id.
        project: String,
        /// The steps' event names, comma-separated: `$pageview,signed_up,created_project`.
        #[arg(long)]
        steps: String,
        /// Seconds from the first step by which the last must have happened [default: 14 days].
        #[arg(long)]
        window_secs: Option<u64>,
        #[command(flatten)]
        range: Range,
    },
}

/// Options both insights take.
#[derive(clap::Args, Debug)]
pub struct Range {
    /// Only events at or after this time: 2026-01-31, 2026-01-31T12:00:00Z, relative as
    /// PostHog writes it (-24h, -7d, -2w, -3m months, -1q quarters, -1y, -30M minutes, -90s),
    /// or `all` (no bound, as when left out).
    #[arg(long, allow_hyphen_values = true)]
    date_from: Option<String>,
    /// Only events up to this time, written as --date-from is (a date means the end of that
    /// day).
    #[arg(long, allow_hyphen_values = true)]
    date_to: Option<String>,
    /// Leave out the persons the project's test-account filters mark as internal.
    #[arg(long)]
    filter_test_accounts: bool,
}

impl Range {
    fn query(&self) -> String {
        let mut q = String::new();
        for (k, v) in [("date_from", &self.date_from), ("date_to", &self.date_to)] {
            if let Some(v) = v {
                q.push_str(&format!("&{k}={}", enc(v)));
            }
        }
        if self.filter_test_accounts {
            q.push_str("&filter_test_accounts=true");
        }
        q
    }
}

fn percent(v: &Value) -> String {
    format!("{:.1}%", v.as_f64().unwrap_or(0.0) * 100.0)
}

/// A funnel answer as a table.
pub fn funnel_table(answer: &Value) -> String {
    let mut out = format!(
        "{:<6}{:<32}{:>10}{:>14}{:>16}\n",
        "STEP", "EVENT", "PERSONS", "CONVERSION", "FROM PREVIOUS"
    );
    for s in answer["results"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "{:<6}{:<32}{:>10}{:>14}{:>16}\n",
            s["order"].as_u64().unwrap_or(0) + 1,
            s["name"].as_str().unwrap_or(""),
            s["count"].to_string(),
            percent(&s["conversion_rate"]),
            percent(&s["conversion_rate_from_previous"]),
        ));
    }
    out
}

/// The query fields the daemon's refusals name, and the flags that set them.
const FLAGS: [(&str, &str); 5] = [
    ("event", "--event"),
    ("steps", "--steps"),
    ("window_secs", "--window-secs"),
    ("date_from", "--date-from"),
    ("date_to", "--date-to"),
];

/// A refusal in the terms the user typed: the daemon's `400: date_from: must be …, e.g.
/// ?steps=a,b` names its query fields; this names the flags (`--date-from: must be …, e.g.
/// --steps a,b`). Other messages pass unchanged.
fn in_flag_terms(message: &str) -> String {
    for (field, flag) in FLAGS {
        if let Some(rest) = message.strip_prefix(&format!("400: {field}: ")) {
            return format!(
                "{flag}: {}",
                rest.replace(&format!("?{field}="), &format!("{flag} "))
            );
        }
    }
    message.to_string()
}

/// Run an insight against the daemon on `socket`.
pub fn run(socket: &Path, cmd: InsightsCmd) -> anyhow::Result<ExitCode> {
    run_query(socket, cmd).map_err(|mut e| {
        if let Some(f) = e.downcast_mut::<super::Failure>() {
            f.message = in_flag_terms(&f.message);
        }
        e
    })
}

fn run_query(socket: &Path, cmd: InsightsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        InsightsCmd::Unique {
            project,
            event,
            by_distinct_id,
            range,
        } => {
            let count_by = if by_distinct_id {
                "distinct_id"
            } else {
                "person"
            };
            let path = format!(
                "/api/projects/{}/insights/unique_persons/?event={}&count_by={count_by}{}",
                enc(&project),
                enc(&event),
                range.query()
            );
            let a = call(socket, "GET", &path, None, Some(&project))?;
            let unit = if by_distinct_id {
                "DISTINCT IDS"
            } else {
                "PERSONS"
            };
            print!(
                "{:<32}{:>14}\n{:<32}{:>14}\n",
                "EVENT",
                unit,
                event,
                a["count"].to_string()
            );
        }
        InsightsCmd::Funnel {
            project,
            steps,
            window_secs,
            range,
        } => {
            let window = window_secs
                .map(|w| format!("&window_secs={w}"))
                .unwrap_or_default();
            let path = format!(
                "/api/projects/{}/insights/funnel/?steps={}{window}{}",
                enc(&project),
                enc(&steps),
                range.query()
            );
            let funnel = call(socket, "GET", &path, None, Some(&project))?;
            print!("{}", funnel_table(&funnel));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::in_flag_terms;

    #[test]
    fn a_refusal_names_the_flag_not_the_query_field() {
        assert_eq!(
            in_flag_terms("400: steps: give 2 to 20 event names, e.g. ?steps=$pageview,signed_up"),
            "--steps: give 2 to 20 event names, e.g. --steps $pageview,signed_up"
        );
        assert_eq!(
            in_flag_terms("400: window_secs: must be at least 1"),
            "--window-secs: must be at least 1"
        );
        assert_eq!(
            in_flag_terms("400: date_to: must be a date"),
            "--date-to: must be a date"
        );
        assert_eq!(
            in_flag_terms("404: project not found"),
            "404: project not found"
        );
    }
}
