//! The command line: ingest, configuration precedence, logs, help.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{bin, dids, free_port, Daemon};

/// `idstitch ingest FILE ARGS --socket S`, FILE holding `text`.
fn ingest_file(d: &Daemon, text: &str, args: &[&str]) -> std::process::Output {
    ingest_into(&d.socket, text, args)
}

#[test]
fn ingest_sends_an_ndjson_file_in_order_and_summarises() {
    let d = Daemon::start();
    let mut lines = String::new();
    for i in 0..1200 {
        lines.push_str(&json!({"event": "e", "distinct_id": format!("anon-{}", i % 10), "uuid": format!("n{i}")}).to_string());
        lines.push('\n');
    }
    lines.push_str(&json!({"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "anon-3"}}).to_string());
    let out = ingest_file(&d, &lines, &["--token", "phc_cli", "--batch-size", "250"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1201 accepted, 0 rejected"));
    assert_eq!(
        dids(&d.person("phc_cli", "user").unwrap()),
        vec!["anon-3", "user"]
    );
}

#[test]
fn ingest_reads_stdin_and_exits_non_zero_when_events_are_rejected() {
    let d = Daemon::start();
    let mut child = Command::new(bin())
        .args(["ingest", "-", "--socket"])
        .arg(&d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = json!({"api_key": "phc_cli", "batch": [{"event": "e", "distinct_id": "ok"}, {"event": "e"}]});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 accepted, 1 rejected"));
    assert!(d.person("phc_cli", "ok").is_some());
}

/// api.md: bad arguments are a failure the user can fix (exit 1), told in one plain line.
#[test]
fn bad_arguments_exit_1_with_one_line_and_help_exits_0() {
    let out = Command::new(bin())
        .args(["serve", "--no-such-flag"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--no-such-flag") && stderr.contains("--help"),
        "{stderr}"
    );
    let help = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--data-dir"));
}

/// The one line keeps what clap lists (the missing arguments, the possible values, a similar
/// flag) and names the help of the subcommand concerned; zero where at least 1 is needed is
/// refused by the parser.
#[test]
fn a_bad_argument_line_says_what_is_missing_or_allowed_and_which_help_to_read() {
    for (args, says) in [
        (
            &["ingest"][..],
            &["not provided: <FILE>", "see `idstitch ingest --help`"][..],
        ),
        (
            &["snapshot", "restore", "x"],
            &[
                "--data-dir <DATA_DIR>",
                "`idstitch snapshot restore --help`",
            ],
        ),
        (
            &["serve", "--on-storage-error", "maybe"],
            &["possible values: degrade, exit", "`idstitch serve --help`"],
        ),
        (
            &["serve", "--data-di", "x"],
            &["similar argument exists: '--data-dir'"],
        ),
        (
            &["snapshot"],
            &["a command is missing", "`idstitch snapshot --help`"],
        ),
        (
            &["ingest", "f", "--batch-size", "0"],
            &["--batch-size", "0 is not in 1.."],
        ),
    ] {
        let out = Command::new(bin()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        for s in says {
            assert!(stderr.contains(s), "{args:?} does not say {s:?}: {stderr}");
        }
    }
}

/// `verify` of a path that holds no data dir (mistyped, or empty) is the user's mistake (exit
/// 1), not corruption: it said "damaged" (exit 3) and pointed at restore and --salvage-wal.
#[test]
fn verify_of_a_missing_or_empty_data_dir_exits_1_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for dir in [tmp.path().join("missing"), empty] {
        let out = Command::new(bin())
            .args(["verify", "--data-dir", dir.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("is not an idstitch data dir"), "{stderr}");
        assert!(!stderr.contains("damaged"), "{stderr}");
    }
}

/// A directory given as ingest's file is named, exit 1 (it opens, and its first read failed
/// with a bare "Is a directory", exit 2).
#[test]
fn ingest_of_a_directory_names_it_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["ingest"])
        .arg(tmp.path())
        .args(["--socket", "/nonexistent.sock"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is a directory", tmp.path().display())),
        "{stderr}"
    );
}

/// `--socket` goes before or after the subcommand of `person`, `project` and `insights`, as
/// it does for `ingest`.
#[test]
fn socket_may_follow_the_subcommand_of_person_project_and_insights() {
    let d = Daemon::start();
    d.capture("phc_sock", json!([{"event": "e", "distinct_id": "s1"}]));
    for args in [
        vec!["person", "show", "phc_sock", "s1", "--socket"],
        vec!["project", "show", "phc_sock", "--socket"],
        vec!["insights", "unique", "phc_sock", "--event", "e", "--socket"],
    ] {
        let out = Command::new(bin())
            .args(&args)
            .arg(&d.socket)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// A pipe (`/dev/stdin`, `<(zcat f.gz)`) is read once: counting its lines for the progress bar
/// with a second reader drained the events past the first 64 KiB.
#[test]
fn ingest_reads_a_pipe_given_by_path_whole() {
    let d = Daemon::start();
    let mut child = Command::new(bin())
        .args(["ingest", "/dev/stdin", "--token", "phc_pipe", "--socket"])
        .arg(&d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..3000 {
            let line = json!({"event": "e", "distinct_id": format!("pipe-{i}"), "uuid": format!("p{i}"),
                "properties": {"pad": "x".repeat(100)}});
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("3000 accepted, 0 rejected"), "{stdout}");
    assert!(d.person("phc_pipe", "pipe-2999").is_some());
}

/// `--token` is for events that carry none: an event's own token still names its project.
#[test]
fn ingest_token_does_not_override_an_events_own_token() {
    let d = Daemon::start();
    let lines = [
        json!({"event": "e", "distinct_id": "own", "api_key": "phc_own"}),
        json!({"event": "e", "distinct_id": "nested", "properties": {"token": "phc_own"}}),
        json!({"event": "e", "distinct_id": "plain"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let out = ingest_file(&d, &text, &["--token", "phc_default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.person("phc_own", "own").is_some());
    assert!(d.person("phc_own", "nested").is_some());
    assert!(d.person("phc_default", "plain").is_some());
    assert!(d.person("phc_default", "own").is_none());
}

/// Why an event was rejected reaches stderr when it is not a terminal, with the event's line
/// (blank lines counted); a request refused mid-file says what was acknowledged before it.
#[test]
fn ingest_reports_rejections_by_line_and_where_a_refused_run_stopped() {
    let d = Daemon::start();
    let text = format!(
        "\n{}\n\n{}\n{}\n",
        json!({"event": "e", "distinct_id": "a", "api_key": "phc_lines"}),
        json!({"event": "e", "api_key": "phc_lines"}),
        json!({"event": "e", "distinct_id": "no-token"}),
    );
    let out = ingest_file(&d, &text, &["--batch-size", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rejected line 4:"), "{stderr}");
    assert!(
        stderr.contains("request 2 (lines 5-5) was refused with 400")
            && stderr.contains("properties. Pass --token for events that carry none.")
            && stderr.contains(
                "the 2 events up to line 4 were answered, 1 of them stored and 1 refused; resend from line 5"
            ),
        "{stderr}"
    );
    assert!(d.person("phc_lines", "a").is_some());
}

/// A line that is a whole batch envelope is refused by its line, saying what it is (it was
/// sent as an event and refused as one without a name); the lines around it go on.
#[test]
fn ingest_refuses_an_envelope_line_saying_what_it_is() {
    let d = Daemon::start();
    let envelope = json!({"api_key": "phc_env", "batch": [{"event": "e", "distinct_id": "x"}]});
    let event = json!({"event": "e", "distinct_id": "a", "api_key": "phc_env"});
    for text in [
        format!("{event}\n{envelope}\n"),
        format!("{envelope}\n{envelope}\n"),
    ] {
        let out = ingest_file(&d, &text, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("rejected line 2: a {\"batch\": [...]} envelope, not an event"),
            "{stderr}"
        );
    }
    assert!(d.person("phc_env", "a").is_some());
    assert!(d.person("phc_env", "x").is_none());
}

/// Where a run stops, the events refused before it (here by ingest itself: `1e400`) are not
/// counted as stored (helper-34 saw "the 3 events up to line 3 were acknowledged").
#[test]
fn ingest_that_stops_counts_refused_lines_apart_from_stored_ones() {
    let d = Daemon::start();
    let ok =
        |did: &str| json!({"event": "e", "distinct_id": did, "api_key": "phc_stop"}).to_string();
    let text = format!(
        "{}
{{\"event\":\"e\",\"distinct_id\":\"x\",\"api_key\":\"phc_stop\",\"n\":1e400}}
{}
not json
{}
",
        ok("a"),
        ok("b"),
        ok("c")
    );
    let out = ingest_file(&d, &text, &["--batch-size", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the 3 events up to line 3 were answered, 2 of them stored and 1 refused; resend from line 4"
        ),
        "{stderr}"
    );
    assert!(d.person("phc_stop", "b").is_some());
    assert!(d.person("phc_stop", "c").is_none());
}

/// A line holding a number no f64 holds (`1e400`) is JSON that serde_json cannot read: it is
/// refused alone, as the daemon refuses such an event, and the run goes on, also past a
/// batch of refused lines only. A `uuid` that is not a string reaches the daemon as sent (it
/// is not replaced by a random one) and is refused there, by line. The rejections are said in
/// the order of the lines, whoever refused them; a lone surrogate escape, which the daemon
/// reads as U+FFFD, is sent.
#[test]
fn ingest_refuses_an_out_of_range_number_or_a_bad_uuid_by_line_and_goes_on() {
    let d = Daemon::start();
    let huge = |did: &str, number: &str| {
        format!(r#"{{"event":"e","distinct_id":"{did}","properties":{{"x":{number}}}}}"#)
    };
    let text = [
        // Lines 1-3 are one request: line 2 is refused by the daemon, line 3 here.
        json!({"event": "e", "distinct_id": "first"}).to_string(),
        json!({"event": "e", "distinct_id": "numbered", "uuid": 5}).to_string(),
        huge("huge", "1e400"),
        // Lines 4-6 are refused here, all three: no request.
        huge("huger", "-2E+999"),
        huge("h5", "1e400"),
        huge("h6", "1e400"),
        r#"{"event":"e","distinct_id":"last","properties":{"cut":"\ud83d"}}"#.to_string(),
    ]
    .join("\n");
    let out = ingest_file(&d, &text, &["--token", "phc_range", "--batch-size", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let said = |line: &str| {
        stderr
            .find(line)
            .unwrap_or_else(|| panic!("no {line:?} in {stderr}"))
    };
    let order = [
        said("rejected line 2: uuid is a number"),
        said("rejected line 3: a number is out of range (1e400)"),
        said("rejected line 4: a number is out of range (-2E+999)"),
        said("rejected line 5:"),
        said("rejected line 6:"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("2 accepted, 5 rejected, 7 events"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for did in ["first", "last"] {
        assert!(d.person("phc_range", did).is_some(), "{did} was not stored");
    }
    for did in ["huge", "huger", "numbered", "h5", "h6"] {
        assert!(d.person("phc_range", did).is_none(), "{did} was stored");
    }
}

/// An element of a document that is not JSON stops the run naming its place.
#[test]
fn ingest_names_the_event_of_a_document_that_is_not_json() {
    let d = Daemon::start();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let text = format!(
        r#"[{{"event": "e", "distinct_id": "a"}}, {{"event": "e", "distinct_id": "b", "properties": {{"deep": {deep}}}}}]"#
    );
    let out = ingest_file(&d, &text, &["--token", "phc_doc"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("event 2: not JSON: recursion limit"),
        "{stderr}"
    );
}

/// The same refusal of one event holding `1e400` in the other shapes of input: a JSON array,
/// a batch envelope (whose `api_key` is still the batch's token), and NDJSON whose very first
/// line holds it (the line that tells NDJSON from a document).
#[test]
fn ingest_refuses_an_out_of_range_number_alone_in_a_document_and_on_the_first_line() {
    let d = Daemon::start();
    let ok = |did: &str| json!({"event": "e", "distinct_id": did}).to_string();
    let huge =
        |did: &str| format!(r#"{{"event":"e","distinct_id":"{did}","properties":{{"x":1e400}}}}"#);
    let shapes = [
        (
            "array",
            format!("[{}, {}, {}]", ok("a1"), huge("a2"), ok("a3")),
            "event 2",
        ),
        (
            "batch",
            format!(
                r#"{{"api_key": "phc_doc", "batch": [{}, {}, {}]}}"#,
                ok("b1"),
                huge("b2"),
                ok("b3")
            ),
            "event 2",
        ),
        (
            "lines",
            format!("{}\n{}\n{}\n", huge("l1"), ok("l2"), ok("l3")),
            "line 1",
        ),
    ];
    for (shape, text, position) in shapes {
        let out = ingest_file(&d, &text, &["--token", "phc_doc"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{shape}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "rejected {position}: a number is out of range (1e400)"
            )),
            "{shape}: {stderr}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("2 accepted, 1 rejected, 3 events"),
            "{shape}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for did in ["a1", "a3", "b1", "b3", "l2", "l3"] {
        assert!(d.person("phc_doc", did).is_some(), "{did} was not stored");
    }
    for did in ["a2", "b2", "l1"] {
        assert!(d.person("phc_doc", did).is_none(), "{did} was stored");
    }
}

/// NDJSON whose first event line is not an event object (here an envelope) is read whole,
/// not a batch at a time, but its rejections are still said by file line, counting the blank
/// lines before it.
#[test]
fn ingest_names_file_lines_when_ndjson_starts_with_an_envelope() {
    let d = Daemon::start();
    let text = [
        String::new(),
        json!({"batch": []}).to_string(),
        json!({"event": "e", "distinct_id": "ok"}).to_string(),
        String::new(),
        r#"{"event":"e","distinct_id":"huge","properties":{"x":1e400}}"#.to_string(),
    ]
    .join("\n");
    let out = ingest_file(&d, &text, &["--token", "phc_env"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rejected line 2: "), "{stderr}");
    assert!(
        stderr.contains("rejected line 5: a number is out of range (1e400)"),
        "{stderr}"
    );
    assert!(d.person("phc_env", "ok").is_some());
}

#[test]
fn ingest_without_a_daemon_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("e.json");
    std::fs::write(&file, "[]").unwrap();
    let out = Command::new(bin())
        .args(["ingest", file.to_str().unwrap(), "--socket"])
        .arg(tmp.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `idstitch serve` running"));
}

#[test]
fn flags_beat_environment_which_beats_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = tmp.path().join("idstitch.toml");
    std::fs::write(
        &config,
        format!("http = \"127.0.0.1:{file_port}\"\nmerge_limit = 5\n"),
    )
    .unwrap();
    let dir = tmp.path().join("store");
    let start = |env: Option<u16>, flag: Option<u16>| {
        let mut c = Command::new(bin());
        c.args(["serve", "--data-dir"])
            .arg(&dir)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn");
        if let Some(p) = env {
            c.env("IDSTITCH_HTTP", format!("127.0.0.1:{p}"));
        }
        if let Some(p) = flag {
            c.arg("--http").arg(format!("127.0.0.1:{p}"));
        }
        c.spawn().unwrap()
    };
    let answers = |port: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    };
    for (env, flag, want) in [
        (None, None, file_port),
        (Some(env_port), None, env_port),
        (Some(env_port), Some(flag_port), flag_port),
    ] {
        let mut child = start(env, flag);
        assert!(answers(want), "expected a listener on {want}");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn a_bad_config_file_is_a_clear_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "no_such_option = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("s"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_such_option") && err.lines().count() == 1,
        "{err}"
    );
    // The line of a key at the start of a line is its own (it was said one line early).
    std::fs::write(&config, "workers = 2\n# a comment\nbogus = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("s"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(line 3): unknown field `bogus`"), "{err}");
}

/// A config file's `http_allow_remote = true` is turned off by the environment or the flag, as
/// every other option is overridden (it used to be or-ed in, so only the file counted).
#[test]
fn http_allow_remote_from_a_config_file_is_overridden_by_env_and_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("remote.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!("http = \"0.0.0.0:{port}\"\nhttp_allow_remote = true\n"),
    )
    .unwrap();
    let refused = |env: Option<&str>, flag: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["serve", "--data-dir"])
            .arg(tmp.path().join("store"))
            .arg("--config")
            .arg(&config);
        if let Some(v) = env {
            c.env("IDSTITCH_HTTP_ALLOW_REMOTE", v);
        }
        if let Some(f) = flag {
            c.arg(f);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{env:?} {flag:?}: {err}");
        err
    };
    for env in ["false", "0", "no", "off"] {
        let err = refused(Some(env), None);
        assert!(
            err.contains("which other machines can reach"),
            "{env}: {err}"
        );
    }
    let err = refused(None, Some("--http-allow-remote=false"));
    assert!(err.contains("which other machines can reach"), "{err}");
    // What is neither yes nor no is a bad argument, from the flag or the environment.
    for (env, flag) in [
        (None, Some("--http-allow-remote=maybe")),
        (Some("maybe"), None),
    ] {
        let err = refused(env, flag);
        assert!(
            err.contains("invalid value 'maybe' for '--http-allow-remote"),
            "{err}"
        );
    }
    assert!(
        !tmp.path().join("store").exists(),
        "refused before the data dir was made"
    );
}

/// `--log-format` takes `text` or `json`; anything else is a bad argument (exit 1), not text.
#[test]
fn an_unknown_log_format_is_refused() {
    let out = Command::new(bin())
        .args([
            "--log-format",
            "yaml",
            "verify",
            "--data-dir",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("yaml") && err.contains("text") && err.contains("json"),
        "{err}"
    );
}

/// A bad value from an `IDSTITCH_*` variable names the variable, since the user never typed
/// the flag clap names; a bad value typed as the flag does not blame the variable.
#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(bin())
            .args(args)
            .arg(tmp.path().join("never"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let serve = ["serve", "--data-dir"];
    let err = run(&serve, &[("IDSTITCH_WORKERS", "abc")]);
    assert!(
        err.contains("'abc'") && err.contains("IDSTITCH_WORKERS"),
        "{err}"
    );
    let err = run(&serve, &[("IDSTITCH_LOG_FORMAT", "yaml")]);
    assert!(err.contains("IDSTITCH_LOG_FORMAT"), "{err}");
    let err = run(
        &["serve", "--workers", "xyz", "--data-dir"],
        &[("IDSTITCH_WORKERS", "abc")],
    );
    assert!(
        err.contains("'xyz'") && !err.contains("IDSTITCH_WORKERS"),
        "{err}"
    );
    assert!(!tmp.path().join("never").exists());
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(bin())
        .args(["--log-format", "json", "serve", "--data-dir"])
        .arg(tmp.path().join("s"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = tmp.path().join("s/idstitch.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.contains("Ready.")));
    for l in lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}

#[test]
fn serve_help_documents_every_option() {
    let out = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--data-dir",
        "--socket",
        "--http",
        "--config",
        "--admin-key-file",
        "--projects",
        "--merge-limit",
        "--max-body-bytes",
        "--salvage-wal",
        "IDSTITCH_DATA_DIR",
    ] {
        assert!(help.contains(opt), "serve --help does not mention {opt}");
    }
}

#[test]
fn sigterm_finishes_in_flight_work_and_exits_0() {
    let mut d = Daemon::start();
    d.capture(
        "phc_cli",
        json!([{"event": "e", "distinct_id": "before-term", "uuid": "t1"}]),
    );
    assert_eq!(d.terminate().code(), Some(0));
    assert!(!d.socket.exists(), "a clean stop removes the socket");
    d.start_again();
    assert!(d.person("phc_cli", "before-term").is_some());
}

#[test]
fn a_second_signal_exits_at_once_while_draining() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let mut child = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "info,idstitch::api::watchdog=debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Synchronise on the daemon's own log lines, never on time.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    };
    wait_for("Ready.");
    let mut conn = std::os::unix::net::UnixStream::connect(dir.join("idstitch.sock")).unwrap();
    // An in-flight request: headers sent, body withheld, so a graceful stop has to wait for it.
    conn.write_all(b"POST /batch/ HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{").unwrap();
    // Only once the daemon has the request in hand is there something to drain: a signal
    // that came first would find an idle connection and stop at once.
    wait_for("Request started.");
    let pid = child.id().to_string();
    let term = || {
        Command::new("kill")
            .arg("-TERM")
            .arg(&pid)
            .status()
            .unwrap()
    };
    term();
    wait_for("Signal received");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal drains instead of exiting"
    );
    term();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "the second signal exits at once");
}

/// What [`FakeDaemon`] does with a request.
#[derive(Clone, Copy)]
enum Answer {
    /// This status, with `Retry-After: 1` on a 503.
    Status(u16),
    /// Close the connection without an answer (a daemon gone mid-request).
    Hang,
}

/// A stand-in for the daemon on a Unix socket: answers each request (kept-alive connections,
/// then new ones) with the next of its answers, the last one from then on, and keeps each
/// request's JSON body.
struct FakeDaemon {
    socket: std::path::PathBuf,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    _tmp: tempfile::TempDir,
}

impl FakeDaemon {
    fn start(answers: Vec<Answer>) -> FakeDaemon {
        use std::io::{BufRead, BufReader, Read};
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("fake.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                'requests: loop {
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break 'requests;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let line = line.to_ascii_lowercase();
                        if let Some(v) = line.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    seen.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap_or_default());
                    let answer = answers[n.min(answers.len() - 1)];
                    n += 1;
                    let (status, extra, text) = match answer {
                        Answer::Hang => break 'requests,
                        Answer::Status(200) => (200, "", r#"{"status": 1}"#),
                        Answer::Status(503) => {
                            (503, "retry-after: 1\r\n", r#"{"detail": "stopping"}"#)
                        }
                        Answer::Status(s) => (s, "", r#"{"detail": "no"}"#),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if stream.write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        FakeDaemon {
            socket,
            bodies,
            _tmp: tmp,
        }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// `idstitch ingest FILE ARGS --socket SOCKET`, FILE holding `text`.
fn ingest_into(socket: &std::path::Path, text: &str, args: &[&str]) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("events.ndjson");
    std::fs::write(&file, text).unwrap();
    Command::new(bin())
        .arg("ingest")
        .arg(&file)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

/// A 503 (honouring `Retry-After`) and a connection lost mid-request are retried, each retry
/// one line on stderr, with the same body: an event the file gave no uuid got one before the
/// first send, so the daemon can drop a resend it already stored.
#[test]
fn ingest_retries_a_503_and_a_lost_connection_with_the_same_uuids() {
    let fake = FakeDaemon::start(vec![Answer::Status(503), Answer::Hang, Answer::Status(200)]);
    let text = format!(
        "{}\n{}\n{}\n",
        json!({"event": "e", "distinct_id": "a", "uuid": "r1"}),
        json!({"event": "e", "distinct_id": "b"}),
        json!({"event": "e", "distinct_id": "c"}),
    );
    let out = ingest_into(
        &fake.socket,
        &text,
        &["--token", "phc_r", "--batch-size", "2"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("3 accepted, 0 rejected"),
        "{stderr}"
    );
    let retries: Vec<&str> = stderr.lines().filter(|l| l.contains("retry")).collect();
    assert_eq!(retries.len(), 2, "{stderr}");
    assert!(
        retries[0].contains("request 1 (lines 1-2): 503"),
        "{stderr}"
    );
    assert!(retries[0].contains("retry 1 of 8 in 1.0s"), "{stderr}");
    assert!(retries[1].contains("retry 2 of 8"), "{stderr}");
    let bodies = fake.bodies();
    assert_eq!(bodies.len(), 4, "{bodies:?}");
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0], bodies[2]);
    let first = bodies[0]["batch"].as_array().unwrap();
    assert_eq!(first[0]["uuid"], json!("r1"));
    let given = first[1]["uuid"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(given).is_ok(), "{given}");
    let last = bodies[3]["batch"].as_array().unwrap();
    assert_eq!(last.len(), 1);
    assert!(last[0]["uuid"].as_str().is_some_and(|u| u != given));
}

/// A batch over the daemon's --max-events-per-request is refused with what to change here.
#[test]
fn ingest_refused_for_too_many_events_says_to_lower_batch_size() {
    let d = Daemon::start_with(&["--max-events-per-request", "3"]);
    let lines: String = (0..5)
        .map(|i| {
            format!(
                "{}\n",
                json!({"event": "e", "distinct_id": format!("u{i}")})
            )
        })
        .collect();
    let out = ingest_file(&d, &lines, &["--token", "phc_many", "--batch-size", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was refused with 413") && stderr.contains("Pass a smaller --batch-size."),
        "{stderr}"
    );
}

/// A 400 (or a 5xx other than 503) is an answer, not a transient failure: sent once.
#[test]
fn ingest_does_not_retry_a_400_or_a_500() {
    for status in [400, 500] {
        let fake = FakeDaemon::start(vec![Answer::Status(status)]);
        let line = json!({"event": "e", "distinct_id": "a"});
        let out = ingest_into(&fake.socket, &format!("{line}\n"), &["--token", "phc_r"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("was refused with {status}: no (")),
            "{stderr}"
        );
        assert!(!stderr.contains("retry"), "{stderr}");
        assert_eq!(fake.bodies().len(), 1);
    }
}

/// A daemon stopped and started again on the same socket mid-ingest: the events sent while it
/// was away are retried until it is back, and every event of the file is stored once.
#[test]
fn ingest_rides_out_a_daemon_restart_without_duplicates() {
    use std::io::BufRead;
    let mut d = Daemon::start();
    let mut child = Command::new(bin())
        .args([
            "ingest",
            "-",
            "--token",
            "phc_restart",
            "--batch-size",
            "1",
            "--socket",
        ])
        .arg(&d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Half the events carry a uuid, half do not.
    let event = |i: usize| {
        let mut e = json!({"event": "e", "distinct_id": format!("r-{i}")});
        if i % 2 == 0 {
            e["uuid"] = json!(format!("restart-{i}"));
        }
        format!("{e}\n")
    };
    for i in 0..10 {
        stdin.write_all(event(i).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let arrived = |d: &Daemon| {
        let r = d.get("/api/projects/phc_restart/persons/?distinct_id=r-9");
        r.status == 200 && !r.json()["results"].as_array().unwrap().is_empty()
    };
    while !arrived(&d) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first events never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    d.terminate();
    // Ignoring a closed pipe: an ingest that gives up at the first failure is gone.
    for i in 10..20 {
        let _ = stdin.write_all(event(i).as_bytes());
    }
    let _ = stdin.flush();
    // Wait for the first retry: the daemon is away while ingest tries.
    let mut seen = Vec::new();
    loop {
        match rx.recv() {
            Ok(line) if line.contains("retry 1 of") => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!("ingest ended without a retry: {seen:?}"),
        }
    }
    d.start_again();
    drop(stdin);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{stdout} {seen:?}");
    assert!(stdout.starts_with("20 accepted, 0 rejected"), "{stdout}");
    for i in 0..20 {
        let events = d
            .get(&format!(
                "/api/projects/phc_restart/events/?distinct_id=r-{i}"
            ))
            .json();
        assert_eq!(
            events["results"].as_array().unwrap().len(),
            1,
            "r-{i}: {events}"
        );
    }
}
