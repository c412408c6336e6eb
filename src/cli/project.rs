//! `idstitch project list|show|set`: projects and their settings over the socket, as tables.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use super::client::Conn;
use super::Failure;

/// Project subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ProjectCmd {
    /// List the daemon's projects: id, token, name.
    List,
    /// Print a project's settings.
    Show {
        /// Project token or id.
        project: String,
    },
    /// Change some of a project's settings (the others stay as they are).
    Set {
        /// Project token or id.
        project: String,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        /// Turn the conversion buffer on or off.
        #[arg(long, value_parser = ["on", "off"])]
        buffer: Option<String>,
        /// The conversion buffer's window, in seconds.
        #[arg(long, allow_negative_numbers = true)]
        buffer_window_secs: Option<u64>,
        /// Refuse merges whose source person has more distinct IDs; `none` for the daemon's
        /// --merge-limit.
        #[arg(long, allow_negative_numbers = true)]
        merge_limit: Option<String>,
        /// The test-account filters, as a JSON list in PostHog's shape, replacing the old ones:
        /// '[{"key": "email", "operator": "not_icontains", "value": "@ourcompany.com", "type": "person"}]'.
        #[arg(long)]
        test_account_filters: Option<String>,
    },
}

/// Percent-encode a path segment or query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the CLI says when the daemon has no project `project` (its 404 "project not found").
pub fn no_project(project: &str) -> anyhow::Error {
    Failure::user(format!(
        "no project {project:?} on this daemon: give its token or id (`idstitch project list` \
         lists them)"
    ))
}

/// One request to the daemon about `project` (none: the list); a non-2xx answer becomes a
/// failure naming the daemon's reason.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
    project: Option<&str>,
) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let resp = rt.block_on(async {
        let mut c = Conn::unix(socket).await?;
        let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?;
        c.request(
            method,
            path,
            &[("content-type", "application/json")],
            bytes.unwrap_or_default(),
        )
        .await
    })?;
    match resp.status {
        200..=299 => Ok(resp.json()),
        404 if resp.detail() == "project not found" => Err(no_project(project.unwrap_or_default())),
        s => Err(Failure::user(format!("{s}: {}", resp.detail()))),
    }
}

fn patch_of(cmd: &ProjectCmd) -> anyhow::Result<Value> {
    let ProjectCmd::Set {
        name,
        buffer,
        buffer_window_secs,
        merge_limit,
        test_account_filters,
        ..
    } = cmd
    else {
        return Ok(Value::Null);
    };
    let mut patch = Map::new();
    if let Some(n) = name {
        patch.insert("name".into(), json!(n));
    }
    let mut cb = Map::new();
    if let Some(b) = buffer {
        cb.insert("enabled".into(), json!(b == "on"));
    }
    if let Some(w) = buffer_window_secs {
        cb.insert("window_secs".into(), json!(w));
    }
    if !cb.is_empty() {
        patch.insert("conversion_buffer".into(), Value::Object(cb));
    }
    if let Some(m) = merge_limit {
        let v = match m.as_str() {
            "none" => Value::Null,
            n => json!(n.parse::<u64>().map_err(|_| Failure::user(format!(
                "--merge-limit {n:?} is not a whole number or none"
            )))?),
        };
        patch.insert("merge_limit".into(), v);
    }
    if let Some(f) = test_account_filters {
        let v: Value = serde_json::from_str(f).map_err(|e| {
            Failure::user(format!("--test-account-filters is not a JSON list: {e}"))
        })?;
        patch.insert("test_account_filters".into(), v);
    }
    if patch.is_empty() {
        return Err(Failure::user(
            "nothing to set: give --name, --buffer, --buffer-window-secs, --merge-limit or --test-account-filters",
        ));
    }
    Ok(Value::Object(patch))
}

/// The projects of `GET /api/projects/` as a table, one line each.
fn list_table(all: &Value) -> String {
    let projects = all["results"].as_array().cloned().unwrap_or_default();
    if projects.is_empty() {
        return "no projects yet: a project is made by the first event sent with its token\n"
            .into();
    }
    // Columns as wide as their widest cell and two spaces (a JSON `Value` ignores a width,
    // so the id is made a string first).
    let rows: Vec<[String; 3]> = projects
        .iter()
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap_or("").to_string();
            [p["id"].to_string(), text("token"), text("name")]
        })
        .collect();
    let width = |i: usize, head: &str| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head.len()])
            .max()
            .unwrap_or(0)
            + 2
    };
    let (id_w, token_w) = (width(0, "ID"), width(1, "TOKEN"));
    let line = |id: &str, token: &str, name: &str| format!("{id:<id_w$}{token:<token_w$}{name}\n");
    let mut out = line("ID", "TOKEN", "NAME");
    for [id, token, name] in &rows {
        out.push_str(&line(id, token, name));
    }
    out
}

/// The settings of a project JSON as a readable table.
pub fn table(p: &Value) -> String {
    let cb = &p["conversion_buffer"];
    let buffer = format!(
        "{}, {} s window",
        if cb["enabled"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        },
        cb["window_secs"]
    );
    let limit = match &p["merge_limit"] {
        Value::Null => "the daemon's --merge-limit".to_string(),
        n => n.to_string(),
    };
    let mut out = String::new();
    for (k, v) in [
        (
            "project",
            format!("{} ({})", p["id"], p["token"].as_str().unwrap_or("")),
        ),
        ("name", p["name"].as_str().unwrap_or("").to_string()),
        ("conversion buffer", buffer),
        ("merge limit", limit),
    ] {
        out.push_str(&format!("{k:<22}{v}\n"));
    }
    let filters = p["test_account_filters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if filters.is_empty() {
        out.push_str(&format!("{:<22}none\n", "test account filters"));
        return out;
    }
    out.push_str("test account filters (persons who fail any are left out):\n");
    out.push_str(&format!("  {:<24}{:<16}{}\n", "KEY", "OPERATOR", "VALUE"));
    for f in filters {
        let value = match &f["value"] {
            Value::Null => String::new(),
            v => v.to_string(),
        };
        out.push_str(&format!(
            "  {:<24}{:<16}{}\n",
            f["key"].as_str().unwrap_or(""),
            f["operator"].as_str().unwrap_or(""),
            value
        ));
    }
    out
}

/// Run a project subcommand against the daemon on `socket`.
pub fn run(socket: &Path, cmd: ProjectCmd) -> anyhow::Result<ExitCode> {
    let answer = match &cmd {
        ProjectCmd::List => {
            let all = call(socket, "GET", "/api/projects/", None, None)?;
            print!("{}", list_table(&all));
            return Ok(ExitCode::SUCCESS);
        }
        ProjectCmd::Show { project } => call(
            socket,
            "GET",
            &format!("/api/projects/{}/", enc(project)),
            None,
            Some(project),
        )?,
        ProjectCmd::Set { project, .. } => {
            let patch = patch_of(&cmd)?;
            call(
                socket,
                "PATCH",
                &format!("/api/projects/{}/", enc(project)),
                Some(patch),
                Some(project),
            )?
        }
    };
    print!("{}", table(&answer));
    Ok(ExitCode::SUCCESS)
}
