//! The `shoplog` binary: a first run needs no setting, SIGTERM stops it, and every
//! bad input is one line on stderr with exit code 2.

mod backup;
mod export;
mod forget;
mod kill9;
mod replay;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) const SHOPLOG: &str = env!("CARGO_BIN_EXE_shoplog_cli");

pub(crate) fn shoplog(args: &[&str]) -> std::process::Output {
    Command::new(SHOPLOG).args(args).env_remove("RUST_LOG").output().expect("runs shoplog")
}

/// Exit code 2 and one line naming the problem.
pub(crate) fn assert_refused(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A failing `fsync` while the log opens (EIO, injected with strace from the
/// Nth call on) is one line and exit code 2, never a panic. sled's own close
/// syncs its file and panics when that fails: it ran on the open's error path,
/// and the panic took the place of the error (exit code 101, from the third
/// call on). strace counts each thread's calls: the open's thread makes at
/// least three (sled's file twice, the data dir), so each case fails the open.
#[tokio::test]
async fn a_failing_fsync_while_the_log_opens_is_one_line_not_a_panic() {
    let dir = tests::temp_dir();
    let data = dir.path().join("data");
    tests::big_log(&data, 256).await;
    let data_arg = data.to_str().expect("utf-8 path");
    let mut refused = 0;
    for when in 1..=3 {
        let output = Command::new(tests::strace())
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync", "-e"])
            .arg(format!("inject=fsync:error=EIO:when={when}+"))
            .arg(SHOPLOG)
            .args(["verify", "--data", data_arg])
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("strace runs shoplog");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "fsync failing from call {when} on: {stderr}");
        // What the open did before it failed may be logged; the failure is one line.
        let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("shoplog: ")).collect();
        match output.status.code() {
            Some(2) => {
                assert_eq!(errors.len(), 1, "fsync failing from call {when} on: {stderr}");
                assert!(errors[0].contains("Input/output error"), "fsync failing from call {when} on: {stderr}");
                refused += 1;
            }
            Some(0) => assert!(errors.is_empty(), "{stderr}"),
            other => panic!("fsync failing from call {when} on: exit {other:?}, {stderr}"),
        }
    }
    assert_eq!(refused, 3, "each failing fsync failed the open");
    // A failed sync of sled's file itself (one call failing, `-P` counting the
    // file's only) is recorded: the log is not trusted again (see
    // `store::sled_file`), and the salvage its message names copies it whole.
    let db = data.join("db");
    let sled_sync_failed = (1..=4).any(|when| {
        let output = Command::new(tests::strace())
            .args(["-f", "-qq", "-o", "/dev/null", "-P"])
            .arg(&db)
            .args(["-e", "trace=fsync", "-e"])
            .arg(format!("inject=fsync:error=EIO:when={when}"))
            .arg(SHOPLOG)
            .args(["verify", "--data", data_arg])
            .env_remove("RUST_LOG")
            .output()
            .expect("strace runs shoplog");
        String::from_utf8_lossy(&output.stderr).contains("shoplog: storage error: fsync of sled's file db")
    });
    assert!(sled_sync_failed, "no run failed the open's sync of sled's file");
    let refused = shoplog(&["verify", "--data", data_arg]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stdout).contains("a sync of sled's file failed"), "{refused:?}");
    let (copy, restored) = (dir.path().join("copy.bak"), dir.path().join("restored"));
    let (copy_arg, restored_arg) = (copy.to_str().expect("utf-8"), restored.to_str().expect("utf-8"));
    let backup = shoplog(&["backup", "--data", data_arg, "--out", copy_arg]);
    assert!(backup.status.success(), "{backup:?}");
    let restore = shoplog(&["restore", "--in", copy_arg, "--data", restored_arg]);
    assert!(restore.status.success(), "{restore:?}");
    let verified = shoplog(&["verify", "--data", restored_arg]);
    assert!(verified.status.success(), "{verified:?}");
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("ok: 264 events"), "{verified:?}");
}

/// A data dir the user may not read (another user's) is named as such, by the
/// offline commands and by `serve`, not as a dir holding no log. As root, which
/// reads any file, the dir is given to `nobody` and shoplog run without the
/// capabilities that pass over file permissions (`setpriv`, util-linux).
#[test]
fn a_data_dir_the_user_may_not_read_is_named_as_such() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tests::temp_dir();
    let data = dir.path().join("data");
    drop(store::EventLog::open(&data).expect("opens"));
    let root = std::fs::metadata(dir.path()).expect("stat").uid() == 0;
    let run = |args: &[&str]| match root {
        true => Command::new("setpriv")
            .arg("--bounding-set=-dac_override,-dac_read_search")
            .arg(SHOPLOG)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("runs setpriv (util-linux: apt install util-linux)"),
        false => shoplog(args),
    };
    let data_arg = data.to_str().expect("utf-8 path");
    if root {
        for path in [data.clone(), data.join("db")] {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown to nobody");
        }
    }
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    // The owner is `nobody` as root, and the user otherwise: what it keeps for itself.
    let owners_only = |mode: u32| if root { mode } else { 0 };
    // A dir that cannot be searched; then one that can, whose `db` cannot be opened.
    for (dir_mode, db_mode) in [(owners_only(0o700), 0o600), (0o755, owners_only(0o600))] {
        chmod(&data, dir_mode);
        chmod(&data.join("db"), db_mode);
        for command in ["verify", "serve"] {
            let output = run(&[command, "--data", data_arg]);
            assert_refused(&output, "permission denied (run shoplog as the user that owns");
        }
    }
    chmod(&data, 0o700);
    chmod(&data.join("db"), 0o600);
}

#[test]
fn bad_settings_are_one_line_and_exit_code_2() {
    let dir = tests::temp_dir();
    let data = dir.path().to_str().expect("utf-8 path");
    assert_refused(&shoplog(&["serve", "--data", data, "--listen", "nonsense"]), "(from --listen)");
    let output = Command::new(SHOPLOG)
        .args(["serve", "--data", data])
        .env("SHOPLOG_REQUEST_TIMEOUT_MS", "soon")
        .output()
        .expect("runs");
    assert_refused(&output, "request_timeout_ms");
    assert_refused(&shoplog(&["serve", "--data", data, "--admin-token", "short"]), "admin_token");
    // No client could send it: an Authorization header holds printable ASCII.
    let accented = ["serve", "--data", data, "--admin-token", "café-café-café-café"];
    assert_refused(&shoplog(&accented), "admin_token must be printable ASCII");
    // A token file that holds no usable token says how to get one.
    for (name, contents, problem) in [
        ("empty", &b""[..], "must be at least 16 characters"),
        (
            "binary",
            &[0xff, 0xfe, 0x00, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d][..],
            "is not text",
        ),
        ("control", &b"a token with a bell\x07 in it\n"[..], "must be printable ASCII"),
    ] {
        let with_file = dir.path().join(name);
        std::fs::create_dir(&with_file).expect("makes a dir");
        std::fs::write(with_file.join("admin-token"), contents).expect("writes");
        let args = ["serve", "--data", with_file.to_str().expect("utf-8"), "--listen", "127.0.0.1:0"];
        let output =
            Command::new("timeout").args(["20", SHOPLOG]).args(args).env_remove("SHOPLOG_ADMIN_TOKEN").output();
        let output = output.expect("runs");
        assert_refused(&output, problem);
        assert_refused(&output, "admin-token");
        assert_refused(&output, "remove it (the next start makes a new one) or set SHOPLOG_ADMIN_TOKEN");
    }
    assert_refused(
        &shoplog(&["serve", "--data", data, "--replica-token", "short"]),
        "replica_token must be at least 16",
    );
    let same = [
        "serve",
        "--data",
        data,
        "--admin-token",
        "one-token-for-both-0001",
        "--replica-token",
        "one-token-for-both-0001",
    ];
    assert_refused(&shoplog(&same), "replica_token must differ from admin_token and viewer_token");
    assert_refused(&shoplog(&["serve", "--data", data, "--cache-mib", "0"]), "cache_mib must be from 1");
    assert_refused(&shoplog(&["serve", "--data", data, "--cache-mib", "lots"]), "lots");
    assert_refused(&shoplog(&["serve", "--config", "/no/such/shoplog.toml"]), "does not exist");
    assert_refused(&shoplog(&["serve", "--data", data, "--nats", "http://127.0.0.1:4222"]), "nats must be a NATS");
    let output = Command::new(SHOPLOG).args(["serve", "--data", data]).env("SHOPLOG_NATS", "nats://[::1").output();
    assert_refused(&output.expect("runs"), "NATS server URL is invalid");
    let mut proxies = Command::new(SHOPLOG);
    proxies.args(["serve", "--data", data]).env("SHOPLOG_TRUSTED_PROXIES", "127.0.0.1, nginx");
    assert_refused(&proxies.output().expect("runs"), "trusted_proxies: nginx is not an IP address");
    // A read replica: NATS is what it copies from; a primary comes with its token.
    let replica = ["project", "--data", data, "--listen", "127.0.0.1:0"];
    let output = Command::new(SHOPLOG).args(replica).env_remove("SHOPLOG_NATS").output().expect("runs");
    assert_refused(&output, "a read replica needs --nats URL");
    let nats = ["--nats", "nats://127.0.0.1:4222"];
    let without_token = [&replica[..], &nats, &["--primary", "http://127.0.0.1:8080"]].concat();
    let output = Command::new(SHOPLOG).args(without_token).env_remove("SHOPLOG_TOKEN").output().expect("runs");
    assert_refused(&output, "primary needs primary_token (--token T)");
    let tls = [&replica[..], &nats, &["--primary", "https://primary.example", "--token", "a-primary-admin-token-0001"]]
        .concat();
    assert_refused(&shoplog(&tls), "only http:// URLs");
    let short = [&replica[..], &nats, &["--primary", "http://127.0.0.1:8080", "--token", "short"]].concat();
    assert_refused(&shoplog(&short), "primary_token must be at least 16 characters");
    // The primary and its token from the config file too; `serve` has none.
    let file = dir.path().join("replica.toml");
    std::fs::write(&file, "primary = \"https://primary.example\"\nprimary_token = \"a-primary-admin-token-0001\"\n")
        .expect("writes the file");
    let from_file = [&replica[..], &nats, &["--config", file.to_str().expect("utf-8 path")]].concat();
    assert_refused(&shoplog(&from_file), "primary https://primary.example: only http:// URLs");
    std::fs::write(&file, "primary = \"http://127.0.0.1:8080\"\nprimary_token = \"a-primary-admin-token-0001\"\n")
        .expect("writes the file");
    let serving = ["serve", "--data", data, "--config", file.to_str().expect("utf-8 path")];
    assert_refused(&shoplog(&serving), "primary: only a read replica (shoplog project) has a primary");
    let output = Command::new(SHOPLOG).args([&replica[..], &nats].concat()).env("SHOPLOG_DEMO", "true").output();
    assert_refused(&output.expect("runs"), "a read replica's log comes from its primary");
    assert_refused(&shoplog(&[&replica[..], &["--nats", "ws://127.0.0.1:4222"]].concat()), "nats must be a NATS");
    assert_refused(&shoplog(&["verify", "--data", "/no/such/dir"]), "does not exist");
    assert_refused(&shoplog(&["serve", "--data"]), "--data");
    assert_refused(&shoplog(&["serve", "--colour", "blue"]), "--colour");
    assert_refused(&shoplog(&["frobnicate"]), "frobnicate");
    assert_refused(&shoplog(&[]), "say which command to run");
    // The logs' settings too.
    for (variable, value) in [("SHOPLOG_LOG_FORMAT", "xml"), ("RUST_LOG", "[bad")] {
        let output =
            Command::new(SHOPLOG).args(["verify", "--data", data]).env(variable, value).output().expect("runs");
        assert_refused(&output, variable);
    }
    // A viewer token equal to the admin token in the data dir would be an admin's.
    let with_token = dir.path().join("with-admin-token");
    std::fs::create_dir(&with_token).expect("makes a dir");
    std::fs::write(with_token.join("admin-token"), "the-same-token-for-both\n").expect("writes");
    let args = ["serve", "--data", with_token.to_str().expect("utf-8"), "--listen", "127.0.0.1:0"];
    // Under `timeout`: a server that started would answer 124, not hang the test.
    let mut command = Command::new("timeout");
    command.args(["20", SHOPLOG]).args(args).args(["--viewer-token", "the-same-token-for-both"]);
    let output = command.env_remove("SHOPLOG_VIEWER_TOKEN").env_remove("SHOPLOG_ADMIN_TOKEN").output();
    assert_refused(&output.expect("runs"), "viewer token must differ from the admin token");
    // Settings read SHOPLOG_<NAME> as well as their flag: the data dir of a CLI command too.
    let output = Command::new(SHOPLOG).args(["verify"]).env("SHOPLOG_DATA", "/no/such/dir").output().expect("runs");
    assert_refused(&output, "/no/such/dir");

    // An address in use is refused before the data dir is touched: no dir, no
    // token files, no demo shop.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = taken.local_addr().expect("an address").to_string();
    let fresh = dir.path().join("fresh");
    let fresh_arg = fresh.to_str().expect("utf-8 path");
    assert_refused(&shoplog(&["serve", "--demo", "--data", fresh_arg, "--listen", &address]), "cannot listen");
    assert!(!fresh.exists(), "a refused serve made its data dir");
}

/// A `shoplog serve` child process and the address it listens on.
pub(crate) struct Served {
    child: std::process::Child,
    pub(crate) address: String,
    /// What it printed to stdout until it listened.
    pub(crate) printed: Vec<String>,
}

impl Served {
    /// Start `shoplog serve` on a random port with `args` and `envs` (no other
    /// `SHOPLOG_` setting from the test's environment), and wait until it listens.
    pub(crate) fn start<A: AsRef<std::ffi::OsStr>>(args: &[A], envs: &[(&str, &str)]) -> Served {
        let mut command = Served::command(SHOPLOG);
        command.args(["serve", "--listen", "127.0.0.1:0"]).args(args).envs(envs.iter().copied());
        // Its logs go with the test's output, shown when the test fails.
        Served::spawn(command.stderr(Stdio::inherit()))
    }

    /// Start `shoplog project` (a read replica) on a random port with `args`,
    /// as [`Served::start`] does.
    pub(crate) fn start_replica<A: AsRef<std::ffi::OsStr>>(args: &[A]) -> Served {
        let mut command = Served::command(SHOPLOG);
        command.args(["project", "--listen", "127.0.0.1:0"]).args(args);
        Served::spawn(command.stderr(Stdio::inherit()))
    }

    /// A command running `program` with no `SHOPLOG_` setting from the test's environment.
    fn command(program: &str) -> Command {
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os().filter(|(key, _)| key.to_string_lossy().starts_with("SHOPLOG_")) {
            command.env_remove(key);
        }
        command
    }

    /// Spawn `command`, which runs `shoplog serve`, in a process group of its own
    /// (so that whatever it starts goes with it), and wait until it listens.
    fn spawn(command: &mut Command) -> Served {
        std::os::unix::process::CommandExt::process_group(command, 0);
        let mut child = command.stdout(Stdio::piped()).spawn().expect("starts");
        let stdout = child.stdout.take().expect("piped");
        let (lines_sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_sender.send(line).is_err() {
                    break;
                }
            }
        });
        // Killed on drop from here on, also when it never listens.
        let mut served = Served { child, address: String::new(), printed: Vec::new() };
        served.address = loop {
            let Ok(line) = lines.recv_timeout(Duration::from_secs(20)) else {
                let status = served.child.try_wait();
                panic!("the server never said where it listens (exit: {status:?}); it printed {:?}", served.printed);
            };
            served.printed.push(line.clone());
            let listening = ["shoplog listening on http://", "shoplog read replica listening on http://"];
            if let Some(rest) = listening.iter().find_map(|prefix| line.strip_prefix(prefix)) {
                break rest.split_whitespace().next().expect("an address").to_owned();
            }
        };
        served
    }

    /// POST a JSON body with a bearer token (none when empty); the status and the body.
    pub(crate) fn post(&self, path: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let mut request = reqwest::Client::new().post(format!("http://{}{path}", self.address)).json(&body);
            if !token.is_empty() {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.expect("answers");
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or_default())
        })
    }

    /// Kill the process group outright (SIGKILL) and wait for the process.
    pub(crate) fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }

    /// Send `signal` (`TERM`, `INT`) and wait until the process ends; its exit status.
    pub(crate) fn stop_with(mut self, signal: &str) -> std::process::ExitStatus {
        let sent = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        assert!(sent.expect("kill runs").success());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("polls") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "SIG{signal} did not stop the server");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test that fails does not leave its server running.
impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// A server whose stdout was closed (`shoplog serve | head -1`) goes on
/// serving, and stops cleanly: what it tells on stdout is not worth dying for.
#[test]
fn a_server_whose_stdout_was_closed_serves_on_and_stops_cleanly() {
    let dir = tests::temp_dir();
    let mut command = Served::command(SHOPLOG);
    command.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(dir.path().join("data"));
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    let address = loop {
        line.clear();
        assert!(stdout.read_line(&mut line).expect("reads") > 0, "the server ended before it listened");
        if let Some(rest) = line.strip_prefix("shoplog listening on http://") {
            break rest.split_whitespace().next().expect("an address").to_owned();
        }
    };
    drop(stdout);
    let served = Served { child, address, printed: Vec::new() };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let health = runtime.block_on(async {
        reqwest::get(format!("http://{}/healthz", served.address)).await.expect("answers").status().as_u16()
    });
    assert_eq!(health, 200, "it serves on");
    let status = served.stop_with("TERM");
    assert_eq!(status.code(), Some(0), "its goodbye to a closed stdout ended it otherwise: {status:?}");
}

#[test]
fn a_first_run_needs_no_setting_and_sigterm_stops_it() {
    let dir = tests::temp_dir();
    let data = dir.path().join("data");
    let served = Served::start(&[std::ffi::OsStr::new("--data"), data.as_os_str()], &[]);
    assert!(
        served.printed.iter().any(|line| line.starts_with("admin-token: in ")),
        "says where the admin token is: {:?}",
        served.printed
    );
    let admin_token = std::fs::read_to_string(data.join("admin-token")).expect("the generated token is there");
    for name in ["admin-token", "viewer-token"] {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data.join(name)).expect("stat").permissions());
        assert_eq!(mode & 0o777, 0o600, "{name} is its owner's only");
    }
    let hidden: Vec<_> = std::fs::read_dir(&data)
        .expect("lists")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.file_name())
        .collect();
    assert!(hidden.is_empty(), "a token file's partial is left: {hidden:?}");

    // Speak HTTP to it with the generated token.
    let body = serde_json::json!({"sku": "first", "name": "First", "price_cents": 100});
    assert_eq!(served.post("/api/v1/products", admin_token.trim(), body).0, 201);

    // The data dir is locked while it runs.
    let data_arg = data.to_str().expect("utf-8 path");
    assert_refused(&shoplog(&["verify", "--data", data_arg]), "in use by a running server");

    let status = served.stop_with("TERM");
    assert!(status.success(), "{status:?}");

    let verified = shoplog(&["verify", "--data", data_arg]);
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("ok: 1 events"), "{verified:?}");
}

/// A byte of sled's own file damaged: sled recovers only the part of its log
/// before it, silently (or, with a snapshot to check against, cannot open it
/// at all). Either way `verify` says the file is damaged on one line of its
/// own, naming the first position lost, with exit code 1 (no log line of
/// sled's, and never "ok" over a log that lost acknowledged events): the
/// checkpoints recorded how far sled was durable (`store::mark`). Every other
/// command fails with that line and exit code 2.
#[test]
fn a_damaged_sled_file_is_corruption_in_one_line() {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(tests::big_log(dir.path(), 20));
    let head = store::EventLog::open(dir.path()).expect("opens").head();
    // A restored copy of it, whose sled has a snapshot to check its file against.
    let (work, data) = (tests::temp_dir(), dir.path().to_str().expect("utf-8"));
    let (file, restored) = (work.path().join("shop.backup"), work.path().join("restored"));
    assert!(shoplog(&["backup", "--data", data, "--out", file.to_str().expect("utf-8")]).status.success());
    let restoring = ["restore", "--in", file.to_str().expect("utf-8"), "--data", restored.to_str().expect("utf-8")];
    let output = shoplog(&restoring);
    assert!(output.status.success(), "{output:?}");
    let snapshots = std::fs::read_dir(&restored).expect("lists").flatten();
    assert!(snapshots.into_iter().any(|entry| entry.file_name().to_string_lossy().starts_with("snap.")));

    let flip = |dir: &std::path::Path| {
        let db = dir.join("db");
        let mut bytes = std::fs::read(&db).expect("reads sled's file");
        bytes[2000] ^= 4;
        std::fs::write(&db, &bytes).expect("writes");
    };
    // Without its snapshots, sled recovers the part of its file before the
    // damage, silently: the checkpoint's mark tells what was lost.
    for entry in std::fs::read_dir(dir.path()).expect("lists").flatten() {
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(entry.path()).expect("removes a snapshot");
        }
    }
    flip(dir.path());
    flip(&restored);
    let output = Command::new(SHOPLOG)
        .args(["verify", "--data", restored.to_str().expect("utf-8")])
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stdout.contains("sled's file in") && stdout.contains("is damaged, sled cannot open it"), "{stdout}");
    assert!(output.stderr.is_empty(), "sled's own log line shows: {output:?}");

    let output = Command::new(SHOPLOG).args(["verify", "--data", data]).env_remove("RUST_LOG").output().expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stdout.starts_with("corrupt at position ") && stdout.contains("sled's file is damaged"), "{stdout}");
    assert!(stdout.contains(&format!("a checkpoint had made it durable up to {head}")), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stderr.is_empty(), "sled's own log line shows: {stderr}");
    assert_refused(&shoplog(&["stats", "--data", data]), "sled's file is damaged");
}

/// A data dir whose sled file is gone, beside what is left of its log (the
/// checkpoint mark, or frames in the write-ahead log), is a lost log: `verify`
/// says so with exit code 1, every other command and `serve` refuse it in one
/// line, and none of them makes a new, empty log there.
#[test]
fn a_deleted_sled_file_is_named_as_a_lost_log_and_no_new_one_is_made() {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(tests::big_log(dir.path(), 20));
    let head = store::EventLog::open(dir.path()).expect("opens").head();
    let data = dir.path().to_str().expect("utf-8");
    std::fs::remove_file(dir.path().join("db")).expect("removes sled's file");
    let output = shoplog(&["verify", "--data", data]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stdout.starts_with("corrupt at position 1: sled's file db is missing"), "{stdout}");
    assert!(stdout.contains(&format!("durable up to position {head} (restore the data directory")), "{stdout}");
    for command in ["stats", "replay", "serve"] {
        assert_refused(&shoplog(&[command, "--data", data]), "sled's file db is missing");
    }
    // A damaged checkpoint mark cannot say how far the log went; with no mark,
    // frames in the write-ahead log tell the same, and with none, sled's snapshot.
    let (mark, wal) = (dir.path().join("checkpointed"), dir.path().join("wal"));
    let snapshot = dir.path().join("snap.0000000000001000");
    let cases: [(&str, &dyn Fn()); 3] = [
        ("the checkpoint mark beside it shows it held a log", &|| std::fs::write(&mark, b"damaged").expect("writes")),
        ("the write-ahead log beside it holds frames", &|| {
            std::fs::remove_file(&mark).expect("removes the mark");
            std::fs::write(&wal, b"frames of the lost log").expect("writes");
        }),
        ("sled's snapshot beside it shows it held a log", &|| {
            std::fs::write(&wal, b"").expect("empties the write-ahead log");
            if !std::fs::read_dir(dir.path())
                .expect("lists")
                .flatten()
                .any(|entry| entry.file_name().to_string_lossy().starts_with("snap."))
            {
                std::fs::write(&snapshot, b"sled's page table").expect("writes");
            }
        }),
    ];
    for (evidence, leave) in cases {
        leave();
        let output = shoplog(&["verify", "--data", data]);
        assert_eq!(output.status.code(), Some(1), "{evidence}: {output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains(evidence), "{output:?}");
        assert_refused(&shoplog(&["serve", "--data", data]), "sled's file db is missing");
        assert!(!dir.path().join("db").exists(), "no new sled file was made");
    }
}

/// A damaged `conf` (sled's settings, which shoplog always gives the same) is
/// named, with the fix, instead of sled's line about versions before 0.29; once
/// it is removed, the log opens whole.
#[test]
fn a_damaged_sled_settings_file_says_to_remove_it() {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(tests::big_log(dir.path(), 20));
    let data = dir.path().to_str().expect("utf-8");
    let conf = dir.path().join("conf");
    let mut bytes = std::fs::read(&conf).expect("reads sled's settings");
    bytes[10] ^= 0x20;
    std::fs::write(&conf, &bytes).expect("writes");
    for command in ["verify", "stats", "serve"] {
        assert_refused(&shoplog(&[command, "--data", data]), "sled's settings file conf in");
    }
    let output = shoplog(&["verify", "--data", data]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("damaged: remove it and start again"), "{output:?}");
    std::fs::remove_file(&conf).expect("removes it");
    let output = shoplog(&["verify", "--data", data]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok: "), "{output:?}");
}

#[test]
fn verify_names_the_first_bad_position_and_exits_1() {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let log = store::EventLog::open(dir.path()).expect("opens");
        for _ in 0..3 {
            log.append(tests::append("s", store::ExpectedVersion::Any, vec![tests::event("E", b"payload")]))
                .await
                .expect("appends");
        }
    });
    {
        let db = tests::raw_sled(dir.path());
        let events = db.open_tree("events").expect("tree");
        let mut record = events.get(2u64.to_be_bytes()).expect("reads").expect("exists").to_vec();
        let last = record.len() - 1;
        record[last] ^= 1;
        events.insert(2u64.to_be_bytes(), record).expect("writes");
        db.flush().expect("flushes");
    }
    let output = shoplog(&["verify", "--data", dir.path().to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("corrupt at position 2"), "{output:?}");

    // The stored tail damaged too: the log does not even open (the tail is
    // checked first, at the head), and verify still names the first bad
    // position, with exit code 1.
    {
        let db = tests::raw_sled(dir.path());
        let meta = db.open_tree("meta").expect("tree");
        let mut last_hash = meta.get("last_hash").expect("reads").expect("exists").to_vec();
        last_hash[0] ^= 1;
        meta.insert("last_hash", last_hash).expect("writes");
        db.flush().expect("flushes");
    }
    let output = shoplog(&["verify", "--data", dir.path().to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("corrupt at position 2"), "{output:?}");
}

#[test]
fn stats_counts_events_by_type_and_category() {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let log = store::EventLog::open(dir.path()).expect("opens");
        for stream in ["product-a", "product-b", "order-1"] {
            let event_type = if stream.starts_with("order") { "OrderPlaced" } else { "ProductCreated" };
            log.append(tests::append(stream, store::ExpectedVersion::NoStream, vec![tests::event(event_type, b"x")]))
                .await
                .expect("appends");
        }
    });
    let output = shoplog(&["stats", "--data", dir.path().to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in
        ["events: 3", "head position: 3", "  product: 2", "  order: 1", "  ProductCreated: 2", "  OrderPlaced: 1"]
    {
        assert!(stdout.lines().any(|printed| printed == line), "{line:?} missing from:\n{stdout}");
    }
    // Every file of the data directory, the write-ahead log's included, as
    // `find` counts them (sled's own count leaves out all but its own file).
    let found = std::process::Command::new("find")
        .args([dir.path().to_str().expect("utf-8"), "-type", "f", "-printf", "%s\\n"])
        .output()
        .expect("find runs");
    let files_len: u64 = String::from_utf8_lossy(&found.stdout).lines().filter_map(|len| len.parse::<u64>().ok()).sum();
    assert!(files_len > 0, "{found:?}");
    let size = stdout.lines().find_map(|line| line.strip_prefix("size on disk: ")).expect("a size line");
    assert!(size.ends_with(&format!(" ({files_len} bytes)")), "{size:?} against {files_len} bytes of files");
    assert_refused(&shoplog(&["stats", "--data", "/no/such/dir"]), "does not exist");

    // A stdout that cannot be written (a full disk; a pipe closed early is the
    // same error) ends the command with its one line, not a panic.
    for command in ["stats", "verify"] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("opens /dev/full");
        let output = Command::new(SHOPLOG)
            .args([command, "--data", dir.path().to_str().expect("utf-8")])
            .env_remove("RUST_LOG")
            .stdout(full)
            .output()
            .expect("runs shoplog");
        assert_refused(&output, "cannot write to stdout: No space left on device");
    }
}

#[test]
fn settings_come_from_the_file_the_environment_and_flags_in_that_order_and_ctrl_c_stops_it() {
    let dir = tests::temp_dir();
    let data = dir.path().join("data");
    let config = dir.path().join("shoplog.toml");
    let (file_token, env_token, flag_token) =
        ("admin-token-from-the-file-01", "admin-token-from-the-env-001", "admin-token-from-a-flag-0001");
    let secret = "a-token-secret-of-32-characters-or-more";
    std::fs::write(&config, format!("admin_token = \"{file_token}\"\ntoken_secret = \"{secret}\"\n"))
        .expect("writes the config");
    let product = |sku: &str| serde_json::json!({"sku": sku, "name": "A", "price_cents": 100});
    let customer = serde_json::json!({"email": "kim@example.com", "name": "Kim", "password": "correct horse"});
    let args = |extra: &[&str]| {
        let mut args =
            vec![std::ffi::OsString::from("--data"), data.clone().into(), "--config".into(), config.clone().into()];
        args.extend(extra.iter().map(std::ffi::OsString::from));
        args
    };

    // The file alone: its token is the admin's. Its secret signs a customer's token.
    let served = Served::start(&args(&[]), &[]);
    assert_eq!(served.post("/api/v1/products", file_token, product("a-1")).0, 201);
    assert_eq!(served.post("/api/v1/customers", "", customer.clone()).0, 201);
    let (status, session) = served.post(
        "/api/v1/sessions",
        "",
        serde_json::json!({"email": "kim@example.com", "password": "correct horse"}),
    );
    assert_eq!(status, 200, "{session}");
    let customer_token = session["token"].as_str().expect("a token").to_owned();
    let add = serde_json::json!({"sku": "a-1", "quantity": 1});
    assert_eq!(served.post("/api/v1/cart/items", &customer_token, add.clone()).0, 200);
    // Ctrl-C stops it as SIGTERM does.
    assert!(served.stop_with("INT").success());

    // The environment over the file.
    let served = Served::start(&args(&[]), &[("SHOPLOG_ADMIN_TOKEN", env_token)]);
    assert_eq!(served.post("/api/v1/products", file_token, product("a-2")).0, 401, "no longer a token");
    assert_eq!(served.post("/api/v1/products", env_token, product("a-2")).0, 201);
    assert!(served.stop_with("TERM").success());

    // A flag over both; another secret from a flag: the customer's token no longer holds.
    let other_secret = "another-token-secret-of-32-characters";
    let served = Served::start(
        &args(&["--admin-token", flag_token, "--token-secret", other_secret]),
        &[("SHOPLOG_ADMIN_TOKEN", env_token)],
    );
    assert_eq!(served.post("/api/v1/products", env_token, product("a-3")).0, 401, "no longer a token");
    assert_eq!(served.post("/api/v1/products", flag_token, product("a-3")).0, 201);
    assert_eq!(served.post("/api/v1/cart/items", &customer_token, add).0, 401, "signed with the file's secret");
    assert!(served.stop_with("TERM").success());
}

/// `serve --data` on a directory that holds no log and other things (`/etc`,
/// a home directory by a typo) is refused, writing nothing there; an empty one,
/// or one holding only a file system's `lost+found` or hidden files, is where
/// it starts a log.
#[test]
fn serve_refuses_a_directory_that_holds_other_things_than_a_log() {
    let dir = tests::temp_dir();
    let foreign = dir.path().join("home");
    std::fs::create_dir(&foreign).expect("makes a dir");
    std::fs::write(foreign.join("notes.txt"), "mine\n").expect("writes");
    let refused = shoplog(&["serve", "--listen", "127.0.0.1:0", "--data", foreign.to_str().expect("utf-8")]);
    assert_refused(&refused, "holds no shoplog log and is not empty (it holds notes.txt)");
    let left: Vec<_> = std::fs::read_dir(&foreign).expect("lists").flatten().map(|entry| entry.file_name()).collect();
    assert_eq!(left, ["notes.txt"], "nothing written there");

    // A mount point; and what a first start stopped before sled made its `db`
    // leaves, which is no stranger's.
    for (name, subdir, file) in [("mounted", "lost+found", ".gitkeep"), ("interrupted", "blobs", "conf")] {
        let data = dir.path().join(name);
        std::fs::create_dir_all(data.join(subdir)).expect("makes a dir");
        std::fs::write(data.join(file), "").expect("writes");
        let served = Served::start(&[std::ffi::OsStr::new("--data"), data.as_os_str()], &[]);
        assert!(served.stop_with("TERM").success());
        assert!(data.join("db").is_file(), "{name}: a log was started there");
    }
}

/// A token generated by an earlier start and then replaced by a configured one
/// is said to be unused at the start: whoever reads the file would get 401s.
#[test]
fn a_generated_token_file_a_configured_token_replaces_is_said_to_be_unused() {
    let dir = tests::temp_dir();
    let data = [std::ffi::OsStr::new("--data"), dir.path().as_os_str()];
    let served = Served::start(&data, &[]);
    assert!(served.printed.iter().any(|line| line.starts_with("admin-token: in ")), "{:?}", served.printed);
    assert!(served.stop_with("TERM").success());
    let configured = [&data[..], &["--admin-token".as_ref(), "a-configured-admin-token-01".as_ref()]].concat();
    let served = Served::start(&configured, &[]);
    let unused = format!("admin-token: the token in {} is not in use", dir.path().join("admin-token").display());
    assert!(served.printed.iter().any(|line| line.starts_with(&unused)), "{:?}", served.printed);
    assert!(served.stop_with("TERM").success());
}

/// The operator commands read `SHOPLOG_DATA` as `serve` does: one pair of double
/// quotes around the whole value is taken off (an environment file's line
/// `SHOPLOG_DATA="/srv/shop"` may reach the process with its quotes), so a
/// restore makes the directory named, not one named with quotes.
#[test]
fn the_operator_commands_take_quoted_settings_off_the_environment_as_serve_does() {
    let work = tests::temp_dir();
    let (data, backup, restored) =
        (work.path().join("data"), work.path().join("b.backup"), work.path().join("restored"));
    drop(store::EventLog::open(&data).expect("makes a log"));
    let quoted = |path: &std::path::Path| format!("\"{}\"", path.display());
    let run = |args: &[&str], data: &std::path::Path| {
        Command::new(SHOPLOG)
            .args(args)
            .env("SHOPLOG_DATA", quoted(data))
            .env_remove("SHOPLOG_SERVER")
            .output()
            .expect("runs")
    };
    let verified = run(&["verify"], &data);
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
    let backed_up = run(&["backup", "--out", backup.to_str().expect("utf-8")], &data);
    assert_eq!(backed_up.status.code(), Some(0), "{backed_up:?}");
    let restore = run(&["restore", "--in", backup.to_str().expect("utf-8")], &restored);
    assert_eq!(restore.status.code(), Some(0), "{restore:?}");
    assert!(restored.join("db").exists(), "restored into {}", restored.display());
    let names: Vec<_> =
        std::fs::read_dir(work.path()).expect("lists").flatten().map(|entry| entry.file_name()).collect();
    assert!(!names.iter().any(|name| name.to_string_lossy().contains('"')), "{names:?}");
    assert_refused(
        &run(&["verify"], std::path::Path::new("/no/such/dir")),
        "data directory /no/such/dir does not exist",
    );
}

/// The server listens for Ctrl-C and SIGTERM before it says where it listens:
/// a signal sent the moment it says so shuts it down (exit 0) and does not kill
/// it. (Its handlers were once installed when the accept loop first ran, so a
/// SIGTERM sent just after an answer, before that loop came round, killed it.)
#[test]
fn it_catches_ctrl_c_and_sigterm_before_it_says_it_listens() {
    for signal in ["TERM", "INT"] {
        let dir = tests::temp_dir();
        let served = Served::start(&[std::ffi::OsStr::new("--data"), dir.path().as_os_str()], &[]);
        let status = std::fs::read_to_string(format!("/proc/{}/status", served.child.id())).expect("its status");
        let caught = status.lines().find_map(|line| line.strip_prefix("SigCgt:")).map(str::trim);
        let caught = caught.and_then(|mask| u64::from_str_radix(mask, 16).ok()).expect("a SigCgt mask");
        // Bit n - 1 for signal n: SIGINT is 2, SIGTERM 15.
        assert_eq!(caught & (1 << 1 | 1 << 14), 1 << 1 | 1 << 14, "SigCgt {caught:#x}");
        let stopped = served.stop_with(signal);
        assert!(stopped.success(), "SIG{signal} at once: {stopped}");
    }
}

/// A server with `token` as its admin token and its stderr in a file (returned
/// beside it), logging what `rust_log` lets through.
fn served_logging(dir: &std::path::Path, token: &str, rust_log: &str) -> (Served, std::path::PathBuf) {
    let stderr = dir.join("stderr.txt");
    let mut command = Served::command(SHOPLOG);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-token", token, "--data"])
        .arg(dir.join("data"))
        .env("RUST_LOG", rust_log)
        .stderr(std::fs::File::create(&stderr).expect("a file for stderr"));
    (Served::spawn(&mut command), stderr)
}

/// The line of `stderr` that says `message` carries the span of the `GET` of
/// `path` whose request id was `request_id`.
fn assert_logged_in_request_span(stderr: &std::path::Path, message: &str, request_id: &str, path: &str) {
    let logged = std::fs::read_to_string(stderr).expect("reads stderr");
    let span = format!("request{{request_id={request_id} method=GET path={path}}}");
    let line = logged.lines().find(|line| line.contains(message));
    assert!(line.is_some_and(|line| line.contains(&span)), "no {message:?} in {span}:\n{logged}");
}

/// Every log line of a request carries its span, also those written after the
/// handler has answered: an online backup is written on a thread of its own.
#[test]
fn an_online_backups_log_line_carries_its_requests_span() {
    let dir = tests::temp_dir();
    let token = "admin-token-for-the-span-01";
    let (served, stderr) = served_logging(dir.path(), token, "info");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = format!("http://{}/admin/backup", served.address);
    let (head, backup) = runtime.block_on(async {
        // A HEAD gets the headers and starts no backup.
        let head = reqwest::Client::new().head(&url).bearer_auth(token).send().await.expect("answers");
        let head = (head.status().as_u16(), head.headers().get("x-head-position").cloned());
        let request = reqwest::Client::new().get(&url).bearer_auth(token).header("x-request-id", "backup-probe-7");
        let response = request.send().await.expect("answers");
        (head, (response.status().as_u16(), response.bytes().await.expect("the whole backup").len()))
    });
    assert_eq!(head, (200, Some(reqwest::header::HeaderValue::from(0))));
    assert_eq!(backup.0, 200);
    assert!(backup.1 > 0, "a backup has a header and a trailer");
    let stopped = served.stop_with("TERM");
    assert!(stopped.success(), "{stopped}; its stderr:\n{}", std::fs::read_to_string(&stderr).unwrap_or_default());
    assert_logged_in_request_span(&stderr, "online backup sent", "backup-probe-7", "/admin/backup");
    let logged = std::fs::read_to_string(&stderr).expect("reads stderr");
    assert_eq!(logged.matches("online backup").count(), 1, "the HEAD made no backup:\n{logged}");
}

/// The live feed is read after its handler has answered, and its log lines
/// carry the request's span too: here the one it writes when a shutdown ends it.
#[test]
fn the_live_feeds_log_line_carries_its_requests_span() {
    let dir = tests::temp_dir();
    let token = "admin-token-for-the-feed-01";
    let (served, stderr) = served_logging(dir.path(), token, "info,api::live=debug");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let feed = runtime.block_on(async {
        let request = reqwest::Client::new()
            .get(format!("http://{}/api/v1/events/live", served.address))
            .bearer_auth(token)
            .header("x-request-id", "feed-probe-3");
        request.send().await.expect("answers")
    });
    assert_eq!(feed.status(), 200);
    // Read the feed until it ends, as a client would, while the server stops.
    let reading = runtime.spawn(async move { feed.bytes().await.map(|bytes| bytes.len()) });
    let stopped = served.stop_with("TERM");
    assert!(stopped.success(), "{stopped}; its stderr:\n{}", std::fs::read_to_string(&stderr).unwrap_or_default());
    let ended = runtime.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(10), reading).await });
    assert!(ended.is_ok(), "the feed ends when the server stops");
    assert_logged_in_request_span(&stderr, "live feed ended", "feed-probe-3", "/api/v1/events/live");
}

#[test]
fn a_failed_fsync_makes_the_server_unready_and_refuse_writes_and_loses_no_acknowledged_command() {
    let dir = tests::temp_dir();
    let data = dir.path().join("data");
    let stderr = dir.path().join("stderr.txt");
    let token = "admin-token-for-the-fault-01";
    // The third `fdatasync` of the write-ahead log, and every one after it, fails.
    let wal = data.join("wal");
    let mut command = Served::command(tests::strace());
    command
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:error=EIO:when=3+",
            "-P",
        ])
        .arg(&wal)
        .args([SHOPLOG, "serve", "--listen", "127.0.0.1:0", "--admin-token", token, "--data"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&stderr).expect("a file for stderr"));
    // Its own process group, so that strace and the server can be killed together.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let served = Served::spawn(&mut command);

    let create = |sku: &str| {
        served.post("/api/v1/products", token, serde_json::json!({"sku": sku, "name": "A", "price_cents": 100}))
    };
    assert_eq!(create("a-1").0, 201);
    assert_eq!(create("a-2").0, 201);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // With an Idempotency-Key: the way to learn the outcome of a command whose write failed.
    let a_3 = |address: &str| {
        let body = serde_json::json!({"sku": "a-3", "name": "A", "price_cents": 100});
        let request = reqwest::Client::new()
            .post(format!("http://{address}/api/v1/products"))
            .bearer_auth(token)
            .header("idempotency-key", "create-a-3")
            .json(&body);
        runtime.block_on(async {
            let response = request.send().await.expect("answers");
            (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap_or_default())
        })
    };
    let (status, problem) = a_3(&served.address);
    assert_eq!((status, &problem["status"]), (503, &serde_json::json!(503)), "{problem}");
    // It tells nothing of the cause (EIO, the file): only where to look, that a
    // restart resumes, and that the command's outcome is unknown (sled may hold
    // the batch and write it, so it may be in the log after the restart).
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("the event log is not accepting writes: "), "{problem}");
    assert!(detail.contains("takes writes again after a restart") && !detail.contains("EIO"), "{problem}");
    assert!(detail.contains("may still be in the log then") && detail.contains("Idempotency-Key"), "{problem}");
    // Refused before it was written: nothing unknown about it.
    let (status, problem) = create("a-4");
    assert_eq!(status, 503, "the log stays refused: {problem}");
    assert!(!problem["detail"].as_str().unwrap_or_default().contains("Idempotency-Key"), "{problem}");
    let ready = runtime.block_on(async {
        let client = reqwest::Client::new();
        let request = client.get(format!("http://{}/readyz", served.address)).header("x-request-id", "probe-after-eio");
        let response = request.send().await.expect("answers");
        (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap_or_default())
    });
    assert_eq!(ready.0, 503, "not ready after a failed fsync");
    // A probe learns the kind of cause, not the OS's words.
    let detail = ready.1["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("(an I/O error)") && !detail.contains("os error"), "{}", ready.1);

    // Killed outright, strace and the server: what was acknowledged is on disk.
    let mut served = served;
    served.kill();
    let log = (0..100)
        .find_map(|_| match store::EventLog::open(&data) {
            Ok(log) => Some(log),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        })
        .expect("the data dir opens once the server is gone");
    for sku in ["a-1", "a-2"] {
        assert_eq!(
            log.read_stream(&format!("product-{sku}"), 1, 10).expect("reads").len(),
            1,
            "{sku} was acknowledged"
        );
    }
    log.verify().expect("the log verifies");
    drop(log);

    // The failure and the request it answered are in the log, with the request's span.
    let logged = std::fs::read_to_string(&stderr).expect("reads stderr");
    assert!(logged.contains("fdatasync of the write-ahead log failed"), "{logged}");
    assert_eq!(logged.matches("append batch not durable").count(), 1, "the failure is logged once:\n{logged}");
    let probe =
        logged.lines().find(|line| line.contains("request{request_id=probe-after-eio method=GET path=/readyz}"));
    // Said as an answer, not as an error: a load balancer asks every few seconds.
    assert!(probe.is_some_and(|line| line.contains(" INFO ") && line.contains("not ready")), "{logged}");

    // Restarted, the command sent again with its key has one outcome, whether
    // its batch reached the disk or not: created, once.
    let served = Served::start(
        &[std::ffi::OsStr::new("--admin-token"), token.as_ref(), "--data".as_ref(), data.as_os_str()],
        &[],
    );
    for _ in 0..2 {
        let (status, body) = a_3(&served.address);
        assert_eq!(status, 201, "{body}");
    }
    assert!(served.stop_with("TERM").success());
    let log = store::EventLog::open(&data).expect("opens");
    assert_eq!(log.read_stream("product-a-3", 1, 10).expect("reads").len(), 1, "a-3 once");
}
