//! TLS to PostgreSQL: a real server with `ssl = on` and a certificate signed by a test CA
//! (made with the `openssl` command), and `quakestream run postgres` connecting with each
//! `sslmode`. What the server says about the connection (`pg_stat_ssl`) is the oracle.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{PgServer, Spawned, quakestream, run, start_broker};

/// A CA, and a server certificate it signed for `localhost` and 127.0.0.1.
fn certificates(dir: &Path, name: &str) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian's openssl package)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", &ca_key, "-out", &ca, "-days", "2"],
            &["-subj", &format!("/CN={name} test CA")],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

/// `quakestream run postgres` with this URL: its banner line once it is connected, or how it
/// failed.
fn run_sink(data: &Path, broker: &str, url: &str) -> Result<Spawned, String> {
    let mut command = quakestream(data);
    command
        .args(["--brokers", broker, "run", "postgres"])
        .env("QUAKESTREAM_POSTGRES_URL", url);
    let mut sink = Spawned::start(&mut command);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    loop {
        let exited = sink.try_wait();
        said.extend(sink.drain_stderr());
        said.extend(sink.drain_stdout());
        if let Some(status) = exited {
            return Err(format!("exited {status}: {}", said.join("\n")));
        }
        if said.iter().any(|l| l.contains("postgres sink started")) {
            return Ok(sink);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the postgres sink neither started nor failed within 60 s:\n{}",
            said.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the sink's connection is encrypted, as the server sees it.
async fn encrypted(pg: &PgServer) -> bool {
    let client = pg.client().await;
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'quakestream'",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "the sink has no connection");
    rows.iter().all(|r| r.get::<_, bool>(0))
}

#[tokio::test]
async fn each_sslmode_connects_as_libpq_would_and_a_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    certificates(dir.path(), "good");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    certificates(&other, "other");

    let pg = PgServer::start();
    pg.enable_tls(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
    );
    let (_broker, broker) = start_broker(&data);
    let base = format!("postgres://postgres@localhost:{}/postgres", pg.port);
    let good_ca = dir.path().join("good-ca.pem");
    let other_ca = other.join("other-ca.pem");

    for (query, want_tls) in [
        (
            format!("sslmode=verify-full&sslrootcert={}", good_ca.display()),
            true,
        ),
        (
            format!("sslmode=verify-ca&sslrootcert={}", good_ca.display()),
            true,
        ),
        ("sslmode=require".to_string(), true),
        (String::new(), true), // prefer: encrypted when the server offers it
        ("sslmode=disable".to_string(), false),
    ] {
        let url = if query.is_empty() {
            base.clone()
        } else {
            format!("{base}?{query}")
        };
        let mut sink = run_sink(&data, &broker, &url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(encrypted(&pg).await, want_tls, "{url}");
        sink.signal("INT");
        sink.wait(Duration::from_secs(30));
    }

    // A certificate no trusted root signed: no connection, and the reason says so.
    let url = format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    );
    let err = run_sink(&data, &broker, &url).err().expect("refused");
    assert!(
        err.contains("certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    // A root file that is not there: a settings error, before anything starts.
    let finished = run(quakestream(&data)
        .args(["--brokers", &broker, "run", "postgres"])
        .env(
            "QUAKESTREAM_POSTGRES_URL",
            format!("{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        ));
    assert!(!finished.status.success());
    assert!(
        finished
            .stderr_text()
            .contains("sslrootcert /nonexistent/ca.pem"),
        "{}",
        finished.stderr_text()
    );
}
