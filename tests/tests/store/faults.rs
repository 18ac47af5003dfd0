//! A failing fsync, injected for real with strace into the child's `fdatasync`:
//! every waiting appender gets an error, nothing more is acknowledged, and the log
//! is consistent when reopened.

use std::process::Command;

use store::{EventLog, ExpectedVersion};
use tests::{append, event};

use super::crash::assert_acks_survived;

const CHILD: &str = env!("CARGO_BIN_EXE_crash_appender");

fn strace() -> &'static str {
    let found = Command::new("strace").arg("-V").output().is_ok_and(|output| output.status.success());
    assert!(
        found,
        "strace is needed to inject fsync failures: install it with `apt-get install -y strace` (.ci/run does)"
    );
    "strace"
}

#[tokio::test]
async fn a_failed_fsync_acknowledges_nothing_more_and_the_log_stays_consistent() {
    let dir = tests::temp_dir();
    // The 12th fdatasync and every one after it fail with EIO.
    let output = Command::new(strace())
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO:when=12+"])
        .arg(CHILD)
        .arg(dir.path())
        .arg("fault")
        .output()
        .expect("strace runs the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();

    let acked = super::crash::acks_of(&lines);
    let errors: Vec<&String> = lines.iter().filter(|line| line.starts_with("err ")).collect();
    assert!(!acked.is_empty(), "the first batches were acknowledged:\n{stdout}");
    assert!(
        errors.iter().any(|line| line.starts_with("err durability ")),
        "the failing batch's appenders heard of it:\n{stdout}"
    );
    assert!(
        errors.iter().all(|line| line.starts_with("err durability ") || line.starts_with("err unavailable ")),
        "every error is about durability:\n{stdout}"
    );
    let numbers = |prefix: &str| -> Vec<u64> {
        let line = lines
            .iter()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
        line.split(' ').map(|number| number.parse().expect("a number")).collect()
    };
    let (answered, stats) = (numbers("answered "), numbers("stats "));
    assert_eq!(answered[0] + answered[1], 8 * 50, "every appender got an answer");
    assert_eq!(stats[0], 11, "exactly the batches whose fdatasync succeeded were committed");
    assert_eq!(answered[0], stats[1], "acknowledged appends are exactly those of the durable batches");
    assert!(
        lines.iter().any(|line| line == "after err unavailable"),
        "appends stay refused after the failure:\n{stdout}"
    );
    assert!(
        lines.iter().any(|line| line.starts_with("failure ") && line.contains("fdatasync")),
        "the failure names fdatasync:\n{stdout}"
    );

    let (head, _) = assert_acks_survived(dir.path(), &acked);
    let log = EventLog::open(dir.path()).expect("reopens");
    let after = log
        .append(append("after-fault", ExpectedVersion::Any, vec![event("E", b"")]))
        .await
        .expect("a reopened log appends again");
    assert_eq!(after.first_position, head + 1);
    log.verify().expect("verifies");
}
