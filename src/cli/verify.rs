//! `idstitch verify --data-dir DIR`: replay the log from seq 1 and compare with live state
//! (with `--derived`, every derived column family: see [`crate::store::verify::verify`]).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::ProgressBar;

use super::Failure;
use crate::store::codec::DERIVED_FORMAT;
use crate::store::verify::{discard, other_derived_format, verify};
use crate::store::{Store, StoreError};

/// Run the command: exit 0 when replay and live state agree, 1 with the differences otherwise;
/// 0 too when the live state is another build's format, which is not compared (it says so).
pub fn run(data_dir: &Path, derived: bool) -> anyhow::Result<ExitCode> {
    super::require_store(data_dir, "")?;
    let store = Store::open_read_only(data_dir).map_err(|e| super::cannot_open(data_dir, e, ""))?;
    let last = store
        .last_log_seq()
        .map_err(|e| Failure::corrupt(e.to_string()))?;
    let bar = ProgressBar::new(last.0).with_style(super::progress_style(
        "{bar:40} {pos}/{len} entries  {rate}  eta {eta}",
    ));
    let other_format = other_derived_format(&store).map_err(|e| Failure::corrupt(e.to_string()))?;
    let started = Instant::now();
    let (scratch, diffs) =
        verify(&store, |s| bar.set_position(s.0), 50, derived).map_err(|e| match e {
            // No room for the scratch store: not the data dir's fault.
            StoreError::Refused(m) => Failure::user(m),
            e => Failure::corrupt(e.to_string()),
        })?;
    bar.finish_and_clear();
    let (persons, dids) = (scratch.person_count(), scratch.distinct_id_count());
    discard(scratch);
    if let Some(f) = other_format {
        println!(
            "ok: {} log entries replayed in {:.2}s ({persons} persons, {dids} distinct IDs). The \
             derived state was written by another idstitch (format {f}; this one's is \
             {DERIVED_FORMAT}), so it was not compared: the next `idstitch serve` on this data \
             dir rebuilds it from the log, then verify compares it{}",
            last.0,
            started.elapsed().as_secs_f64(),
            if derived { " (--derived too)" } else { "" },
        );
        return Ok(ExitCode::SUCCESS);
    }
    if diffs.is_empty() {
        let (also, hint) = match derived {
            true => (" and every derived column family", ""),
            false => (
                "",
                " (--derived also compares the other derived column families)",
            ),
        };
        println!(
            "ok: {} log entries replayed in {:.2}s; {} persons and {} distinct IDs{also} agree with the live state{hint}",
            last.0,
            started.elapsed().as_secs_f64(),
            persons,
            dids
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for d in &diffs {
            println!("{d}");
        }
        println!(
            "verify: live state differs from the replayed log ({} difference(s) shown)",
            diffs.len()
        );
        Ok(ExitCode::from(1))
    }
}
