//! `promptmq serve` as a process: bad flags and data directories are refused with clear
//! errors; SIGTERM disconnects MQTT 5 clients with "server shutting down" and exits cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn promptmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_promptmq"))
}

#[test]
fn bad_flags_and_directories_are_refused() {
    let out = promptmq().args(["serve", "--sync", "sometimes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use always, none or interval:MS"));

    let file = tempfile::NamedTempFile::new().unwrap();
    let out = promptmq().args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(file.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot open the data directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `promptmq serve` on free loopback ports: the process, its MQTT address and its
/// metrics endpoint address.
fn spawn_serve(dir: &std::path::Path) -> (std::process::Child, String, String) {
    spawn_serve_with(dir, &[])
}

/// [`spawn_serve`] with more arguments.
fn spawn_serve_with(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, String, String) {
    let mut child = promptmq()
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut mqtt, mut metrics) = (None, None);
    while mqtt.is_none() {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "serve exited before listening");
        if let Some(a) = line.trim().strip_prefix("promptmq listening on ") {
            mqtt = Some(a.to_string());
        }
        if let Some(a) = line.trim().strip_prefix("promptmq metrics on http://") {
            metrics = Some(a.trim_end_matches("/metrics").to_string());
        }
    }
    (child, mqtt.unwrap(), metrics.expect("metrics address printed before the listener"))
}

#[test]
fn sigterm_disconnects_clients_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _) = spawn_serve(dir.path());
    let mut s = TcpStream::connect(&addr).unwrap();
    // MQTT 5 CONNECT, clean start, client id "t".
    s.write_all(&[0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, b't'])
        .unwrap();
    let mut connack = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut connack).unwrap();
    assert!(n >= 4 && connack[0] == 0x20 && connack[3] == 0x00, "CONNACK success: {:02x?}", &connack[..n]);

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.len() >= 3 && rest[0] == 0xe0 && rest[2] == 0x8b,
        "DISCONNECT with reason 0x8B (server shutting down): {rest:02x?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_help_documents_every_option() {
    let out = promptmq().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let example =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../promptmq.example.yaml"))
            .unwrap();
    // Every key of the example file (a `key:` at the start of a line, comments aside).
    let keys: Vec<&str> = example
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
        .collect();
    assert!(keys.len() > 40, "{keys:?}");
    for k in &keys {
        assert!(help.contains(&format!("{k}:")), "serve --help does not document {k}");
    }
    // And the example documents every option there is (the effective config's keys).
    let out = promptmq().args(["config", "print"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(m) = v.as_object() {
            for (k, child) in m {
                out.push(k.clone());
                walk(child, out);
            }
        }
    }
    let mut all = Vec::new();
    walk(&v, &mut all);
    for k in all {
        assert!(keys.contains(&k.as_str()), "option {k} is missing from promptmq.example.yaml");
    }
}

#[test]
fn config_check_print_and_layers() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../promptmq.example.yaml");
    let out = promptmq().args(["config", "check"]).arg(&example).output().unwrap();
    assert!(out.status.success(), "the shipped example is valid: {}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "limits:\n  max_pakcet_size: 10\n").unwrap();
    let out = promptmq().args(["config", "check"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_pakcet_size") && err.contains("max_packet_size"),
        "names the key and the allowed ones: {err}"
    );

    // Environment overrides the file; `config print` shows the result.
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[limits]\nmax_packet_size = 4096\nmax_queued_messages = 5\n").unwrap();
    let out = promptmq()
        .args(["config", "print", "--config"])
        .arg(&file)
        .env("PROMPTMQ_LIMITS__MAX_PACKET_SIZE", "8192")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["limits"]["max_packet_size"], 8192);
    assert_eq!(v["limits"]["max_queued_messages"], 5);
    assert_eq!(v["listeners"]["tcp"]["bind"], "127.0.0.1:1883");

    // A bad value in the environment is named too, and `serve` refuses to start on it.
    let out = promptmq().args(["serve"]).env("PROMPTMQ_STORAGE__SYNC", "sometimes").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.sync"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// GET `path` from `addr` over plain HTTP/1.1: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Checks that `text` is Prometheus text exposition format and returns its samples.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix('#') {
            let kind = c.split_whitespace().next().unwrap_or("");
            assert!(kind == "HELP" || kind == "TYPE", "comment line: {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "labels in {line:?}");
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        out.insert(series.to_string(), v);
    }
    out
}

#[test]
fn metrics_health_and_readiness_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mqtt, metrics) = spawn_serve(dir.path());
    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(&metrics, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(http_get(&metrics, "/nothing").0, 404);

    let received = |m: &std::collections::HashMap<String, f64>| {
        m.get("promptmq_messages_received_total{qos=\"1\"}").copied().unwrap_or(0.0)
    };
    let (status, body) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200);
    let before = parse_prometheus(&body);
    // Publish 5 QoS 1 messages with a raw MQTT 3.1.1 client.
    let mut s = TcpStream::connect(&mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b'm']).unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    for id in 1..=5u8 {
        // PUBLISH QoS 1, topic "t", packet id `id`, payload "x".
        s.write_all(&[0x32, 0x06, 0x00, 0x01, b't', 0x00, id, b'x']).unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [0x40, 0x02, 0x00, id], "PUBACK");
    }
    let (_, body) = http_get(&metrics, "/metrics");
    let after = parse_prometheus(&body);
    assert_eq!(received(&after) - received(&before), 5.0, "the QoS 1 counter moved by 5");
    assert_eq!(after.get("promptmq_connections"), Some(&1.0));
    for name in [
        "promptmq_wal_append_seconds_count",
        "promptmq_wal_fsync_seconds_count",
        "promptmq_wal_commit_batch_records_count",
        "promptmq_wal_segments",
        "promptmq_wal_segment_bytes",
        "promptmq_recovery_seconds",
        "promptmq_sessions",
        "promptmq_subscriptions",
        "promptmq_retained_messages",
        "promptmq_messages_from_log_total",
    ] {
        assert!(after.contains_key(name), "{name} is exported:\n{body}");
    }
    assert!(after["promptmq_wal_append_seconds_count"] >= 5.0);
    // Every metric the shipped Grafana dashboard queries is exported.
    let dash = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/promptmq-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dash).unwrap()).unwrap();
    let mut used = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("promptmq_") {
                let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[i + name.len()..];
                used.push(name);
            }
        }
    }
    assert!(used.len() > 10);
    for name in used {
        assert!(
            after.keys().any(|k| k == &name || k.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
    assert!(body.contains("# TYPE promptmq_wal_fsync_seconds histogram"), "a histogram, not a summary");
    drop(s);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
}

/// The CONNACK return code a raw MQTT 3.1.1 CONNECT (clean session, no username) gets.
fn anonymous_connack(addr: &str) -> u8 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b'a']).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(&ack[..2], &[0x20, 0x02], "CONNACK");
    ack[3]
}

#[test]
fn passwd_manages_users_and_sighup_reloads_auth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let run = |args: &[&str], stdin: &str| {
        let mut c = promptmq()
            .arg("passwd")
            .arg(&file)
            .args(args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    assert!(run(&["alice"], "wonderland\n").status.success());
    assert!(run(&["bob"], "builder\n").status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("alice:$argon2id$") && text.contains("bob:$argon2id$"), "{text}");
    assert!(!text.contains("wonderland"), "no plain text");
    assert!(run(&["bob", "--delete"], "").status.success());
    assert!(!std::fs::read_to_string(&file).unwrap().contains("bob:"));
    let empty = run(&["carol"], "\n");
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty password"));

    // A config file turns anonymous access off; SIGHUP after editing it turns it on.
    let cfg = dir.path().join("promptmq.yaml");
    let write_cfg = |anon: bool| {
        std::fs::write(&cfg, format!("auth:\n  allow_anonymous: {anon}\n  password_file: {}\n", file.display()))
            .unwrap()
    };
    write_cfg(false);
    let data = dir.path().join("data");
    let (mut child, mqtt, _) = spawn_serve_with(&data, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(anonymous_connack(&mqtt), 5, "not authorized");
    write_cfg(true);
    assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while anonymous_connack(&mqtt) != 0 {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not apply allow_anonymous");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
}

/// Publishes `n` QoS 0 messages of `size` bytes to `topic` over a raw MQTT 3.1.1 connection.
fn flood(addr: &str, topic: &str, n: usize, size: usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b'f']).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).unwrap();
    let mut packet = Vec::new();
    let remaining = 2 + topic.len() + size;
    packet.push(0x30);
    let mut r = remaining;
    loop {
        let mut byte = (r % 128) as u8;
        r /= 128;
        if r > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if r == 0 {
            break;
        }
    }
    packet.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    packet.extend_from_slice(topic.as_bytes());
    packet.resize(packet.len() + size, b'x');
    for _ in 0..n {
        s.write_all(&packet).unwrap();
    }
}

/// A connection the broker cannot finish (its client reads nothing, the socket is full)
/// makes the graceful shutdown wait; a second SIGTERM exits at once (status 130).
#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mqtt, _) = spawn_serve(dir.path());
    // A subscriber that never reads.
    let mut sub = TcpStream::connect(&mqtt).unwrap();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sub.write_all(&[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b's']).unwrap();
    let mut ack = [0u8; 4];
    sub.read_exact(&mut ack).unwrap();
    // SUBSCRIBE packet id 1 to "f" QoS 0.
    sub.write_all(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'f', 0x00]).unwrap();
    let mut suback = [0u8; 5];
    sub.read_exact(&mut suback).unwrap();
    flood(&mqtt, "f", 40, 900_000);
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the stuck connection: {:?}",
        child.try_wait()
    );
    let asked = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(asked.elapsed() < Duration::from_secs(3), "the second signal exits at once");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    drop(sub);
}

/// `logging.format: json` writes one JSON object per line, and each connect and disconnect
/// is one line naming the client, its address and the reason.
#[test]
fn json_logs_with_one_line_per_connect_and_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = promptmq()
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log", "info", "--data-dir"])
        .arg(dir.path())
        .env("PROMPTMQ_LOGGING__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mqtt = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0);
        if let Some(a) = line.trim().strip_prefix("promptmq listening on ") {
            break a.to_string();
        }
    };
    assert_eq!(anonymous_connack(&mqtt), 0); // connects as "a", then the socket closes
    std::thread::sleep(Duration::from_millis(200));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let output = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |msg: &str| {
        lines.iter().find(|v| v["fields"]["message"] == msg).unwrap_or_else(|| panic!("no {msg:?} line in {lines:#?}"))
    };
    let connected = find("client connected");
    assert_eq!(connected["fields"]["client"], "a");
    assert!(connected["fields"]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let gone = find("client disconnected");
    assert_eq!(gone["fields"]["client"], "a");
    assert!(gone["fields"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{gone}");
}
