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

#[test]
fn sigterm_disconnects_clients_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = promptmq()
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("promptmq listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
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
