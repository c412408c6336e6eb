//! `idstitch person show|history|split|delete`: operator access over the socket.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

use super::client::Conn;
use super::project::enc;
use super::Failure;

/// Person subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum PersonCmd {
    /// Show the person of a distinct ID, with the decisions that joined it (`--explain`).
    Show {
        /// Project token or id.
        project: String,
        /// A distinct ID.
        distinct_id: String,
        /// Also print why the ID belongs to this person.
        #[arg(long)]
        explain: bool,
    },
    /// Print a person's logged history, oldest first.
    History {
        /// Project token or id.
        project: String,
        /// Person uuid.
        uuid: String,
    },
    /// Split a person into one person per distinct ID.
    Split {
        /// Project token or id.
        project: String,
        /// Person uuid.
        uuid: String,
        /// The ID that keeps the properties.
        #[arg(long)]
        main: Option<String>,
    },
    /// Delete a person (a logged tombstone).
    Delete {
        /// Project token or id.
        project: String,
        /// Person uuid.
        uuid: String,
        /// Delete its events too.
        #[arg(long)]
        delete_events: bool,
    },
}

/// The project a subcommand names.
fn project_of(cmd: &PersonCmd) -> &str {
    match cmd {
        PersonCmd::Show { project, .. }
        | PersonCmd::History { project, .. }
        | PersonCmd::Split { project, .. }
        | PersonCmd::Delete { project, .. } => project,
    }
}

/// The person uuid a subcommand names (all but `show`).
fn uuid_of(cmd: &PersonCmd) -> Option<&str> {
    match cmd {
        PersonCmd::Show { .. } => None,
        PersonCmd::History { uuid, .. }
        | PersonCmd::Split { uuid, .. }
        | PersonCmd::Delete { uuid, .. } => Some(uuid),
    }
}

/// Run a person subcommand against the daemon on `socket`.
pub fn run(socket: &Path, cmd: PersonCmd) -> anyhow::Result<ExitCode> {
    let (method, path, body) = match &cmd {
        PersonCmd::Show {
            project,
            distinct_id,
            explain,
        } => (
            "GET",
            format!(
                "/api/projects/{}/persons/?distinct_id={}&explain={explain}",
                enc(project),
                enc(distinct_id)
            ),
            Value::Null,
        ),
        PersonCmd::History { project, uuid } => (
            "GET",
            format!(
                "/api/projects/{}/persons/{}/history/",
                enc(project),
                enc(uuid)
            ),
            Value::Null,
        ),
        PersonCmd::Split {
            project,
            uuid,
            main,
        } => (
            "POST",
            format!(
                "/api/projects/{}/persons/{}/split/",
                enc(project),
                enc(uuid)
            ),
            json!({"main_distinct_id": main}),
        ),
        PersonCmd::Delete {
            project,
            uuid,
            delete_events,
        } => (
            "DELETE",
            format!(
                "/api/projects/{}/persons/{}/?delete_events={delete_events}",
                enc(project),
                enc(uuid)
            ),
            Value::Null,
        ),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let resp = rt.block_on(async {
        let mut c = Conn::unix(socket).await?;
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body)?
        };
        c.request(
            method,
            &path,
            &[("content-type", "application/json")],
            bytes,
        )
        .await
    })?;
    match resp.status {
        200 => println!("{}", serde_json::to_string_pretty(&resp.json())?),
        204 => println!("deleted"),
        404 if resp.detail() == "project not found" => {
            return Err(super::project::no_project(project_of(&cmd)))
        }
        404 if uuid_of(&cmd).is_some() => {
            return Err(Failure::user(format!(
                "no person has the uuid {:?} in project {:?} ({}); `idstitch person show \
                 PROJECT DISTINCT_ID` shows the uuid of a distinct ID's person",
                uuid_of(&cmd).unwrap_or_default(),
                project_of(&cmd),
                resp.detail()
            )))
        }
        s => return Err(Failure::user(format!("{s}: {}", resp.detail()))),
    }
    if let PersonCmd::Show {
        project,
        distinct_id,
        ..
    } = &cmd
    {
        if resp.json()["results"]
            .as_array()
            .is_some_and(|a| a.is_empty())
        {
            eprintln!(
                "idstitch: no person has the distinct ID {distinct_id:?} in project {project:?}"
            );
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
