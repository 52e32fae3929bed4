//! Debian's kcat (librdkafka 2.0.2) against `quakestream broker`: list, consume and produce.
//!
//! Regression test for `ApiVersionRequest failed: Local: Read underflow`: tansu 0.6 answers
//! ApiVersions v3 with default tagged fields that librdkafka 2.0.2 cannot skip, so kcat
//! could not even list topics. The broker's front (`src/kafka/front.rs`) drops them.
//!
//! kcat is a system package (`apt-get install kcat`; `scripts/test.sh` installs it). Without it
//! this test fails: it is the only check that an older librdkafka can use the broker.

mod common;

use std::process::Command;

use quakestream::kafka::{KafkaSettings, TopicName, admin::Admin, producer::Producer};

const TOPIC: &str = "kcat-check";

/// A kcat command, or a failure that says how to install it.
fn kcat() -> Command {
    let found = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "kcat is not installed: `apt-get install -y kcat` (scripts/test.sh installs it in CI)"
    );
    Command::new("kcat")
}

/// Runs kcat against `addr` and returns its stdout lines, failing with its stderr if it fails.
/// Every wait is bounded: metadata by `-m`, deliveries by `message.timeout.ms`, the whole run by
/// [`common::run`].
fn run_kcat(addr: &str, args: &[&str]) -> Vec<String> {
    let mut command = kcat();
    command
        .args(["-b", addr, "-m", "30", "-X", "message.timeout.ms=30000"])
        .args(args);
    let finished = common::run(&mut command);
    let stderr = finished.stderr_text();
    assert!(
        finished.status.success() && !stderr.contains("Read underflow"),
        "kcat {args:?} failed ({}):\n{stderr}",
        finished.status
    );
    finished.stdout
}

#[test]
fn debian_kcat_lists_consumes_and_produces_through_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, addr) = common::start_broker(&dir.path().join("data"));

    // Keyed messages from quakestream's own producer (librdkafka 2.x through the front too).
    let sent = [
        ("quake-1", "M 4.2 Chile"),
        ("quake-2", "M 5.0 Japan"),
        ("quake-3", "M 3.1 Italy"),
    ];
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let settings = KafkaSettings::for_bootstrap(&addr);
        let topic: TopicName = TOPIC.parse().unwrap();
        Admin::connect(&settings)
            .await
            .unwrap()
            .create(&topic, 3, 1)
            .await
            .unwrap();
        let producer = Producer::new(&settings).unwrap();
        for (key, value) in sent {
            producer
                .send(TOPIC, Some(key), value.as_bytes(), None)
                .await
                .unwrap();
        }
    });

    // Metadata: the broker is advertised at the front's address, the topic has its partitions.
    let listing = run_kcat(&addr, &["-L"]).join("\n");
    assert!(
        listing.contains(&format!("broker 111 at {addr}")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("topic \"{TOPIC}\" with 3 partitions")),
        "{listing}"
    );

    let consume = |addr: &str| {
        let mut lines = run_kcat(addr, &["-C", "-t", TOPIC, "-e", "-f", "%k=%s\\n"]);
        lines.sort();
        lines
    };
    let expected: Vec<String> = sent.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(consume(&addr), expected);

    // kcat produces too (ProduceRequest from librdkafka 2.0.2), and reads it back.
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "quake-4:M 6.1 Peru\n").unwrap();
    run_kcat(
        &addr,
        &["-P", "-t", TOPIC, "-K", ":", "-l", input.to_str().unwrap()],
    );
    let mut expected = expected;
    expected.push("quake-4=M 6.1 Peru".into());
    assert_eq!(consume(&addr), expected);
}
