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
