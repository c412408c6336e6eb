//! Pure identity rules: ids, normalisation, decide and apply. No I/O, no actix, nothing else
//! from this crate.

pub mod admin;
pub mod apply;
pub mod buffer;
pub mod change;
pub mod decide;
pub mod filters;
pub mod funnel;
pub mod ids;
pub mod js;
pub mod json_out;
pub mod memstate;
pub mod normalize;
pub mod person;
pub mod props;
pub mod scan;
pub mod settings;
pub(crate) mod swar;
pub mod time;
pub mod warnings;
pub mod wire;

pub use apply::{apply_entry, apply_entry_to_person, Applying, State};
pub use change::{Change, Entry, RefusalReason, StoredEvent};
pub use decide::{decide, lookups, Ctx, Decision};
pub use ids::{is_illegal_distinct_id, person_uuid, PersonUuid, ProjectId, Seq};
pub use normalize::{
    normalize, normalize_owned, normalize_received, normalize_wire, EventUpdates, MergeKind,
    Normalized, Rejection,
};
pub use person::Person;
pub use props::{Props, RawProps};
pub use settings::{ProjectSettings, SettingsError, SettingsPatch};
pub use time::Received;
pub use warnings::{Warning, WarningKind, WarningLimiter};
pub use wire::{EventProps, WireEvent};
