//! Interoperability with the Mosquitto command-line clients (installed by `.ci/run`).

use std::process::{Command, Stdio};
use std::time::Duration;

use promptmq_tests::TestBroker;

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

#[test]
fn mosquitto_pub_and_sub_in_both_versions() {
    assert!(
        have("mosquitto_pub") && have("mosquitto_sub"),
        "mosquitto-clients must be installed (.ci/run installs them)"
    );
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let port = b.addr.port().to_string();
    for (version, qos) in [("311", "1"), ("5", "2"), ("31", "0")] {
        let topic = format!("interop/{version}");
        let sub = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", qos, "-t", &topic, "-C", "3", "-W", "10", "-v"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub");
        std::thread::sleep(Duration::from_millis(500));
        for i in 0..3 {
            let st = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-q",
                    qos,
                    "-t",
                    &topic,
                    "-m",
                    &format!("msg {i}"),
                ])
                .status()
                .expect("mosquitto_pub");
            assert!(st.success(), "mosquitto_pub -V {version} failed");
        }
        let out = sub.wait_with_output().expect("sub output");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            (0..3).map(|i| format!("{topic} msg {i}")).collect::<Vec<_>>(),
            "-V {version}"
        );
    }
    // A retained message set by mosquitto_pub -r is delivered to a later mosquitto_sub.
    assert!(Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "interop/retained", "-m", "kept", "-r", "-q", "1"])
        .status()
        .unwrap()
        .success());
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "interop/retained", "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kept");
}

/// Runs `mosquitto_pub` against `port` with `args`; panics if it fails.
fn mpub(port: u16, args: &[&str]) {
    let port = port.to_string();
    let st = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .status()
        .expect("mosquitto_pub");
    assert!(st.success(), "mosquitto_pub {args:?} failed");
}

/// Runs `mosquitto_sub` against `port` with `args` to completion; its output lines.
fn msub(port: u16, args: &[&str]) -> Vec<String> {
    let port = port.to_string();
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .output()
        .expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// mosquitto_sub with a persistent session (`-c -i`, and in v5 a session expiry) gets what
/// was published while it was away, also across a broker restart.
#[test]
fn mosquitto_sub_persistent_session_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    for version in ["311", "5"] {
        let b = TestBroker::start(dir.path());
        let port = b.addr.port();
        let id = format!("keeper-{version}");
        let session: Vec<&str> = if version == "5" { vec!["-x", "3600"] } else { vec![] };
        let mut sub_args = vec!["-V", version, "-c", "-i", &id, "-q", "2", "-t", "away/#"];
        sub_args.extend(&session);
        // Subscribe, then leave (-E: exit once subscribed).
        let mut first = sub_args.clone();
        first.push("-E");
        msub(port, &first);
        for i in 0..3 {
            mpub(port, &["-V", version, "-q", "2", "-t", "away/x", "-m", &format!("m{i}")]);
        }
        b.stop();
        let b = TestBroker::start(dir.path());
        let mut back = sub_args.clone();
        back.extend(["-C", "3", "-W", "10"]);
        assert_eq!(msub(b.addr.port(), &back), vec!["m0", "m1", "m2"], "-V {version}");
        b.stop();
    }
}

/// Two mosquitto_sub members of a shared subscription split the messages between them.
#[test]
fn mosquitto_sub_shared_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let port = b.addr.port().to_string();
    let members: Vec<_> = (0..2)
        .map(|_| {
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port, "-V", "5", "-q", "1", "-t", "$share/g/jobs", "-W", "3"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("mosquitto_sub")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..10 {
        mpub(b.addr.port(), &["-V", "5", "-q", "1", "-t", "jobs", "-m", &i.to_string()]);
    }
    let mut all = Vec::new();
    for m in members {
        let out = m.wait_with_output().expect("member output");
        let got: Vec<u32> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.parse().ok()).collect();
        assert!(!got.is_empty() && got.len() < 10, "each member gets a share: {got:?}");
        all.extend(got);
    }
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>(), "each message to exactly one member");
}

/// A v5 user property set with `mosquitto_pub -D` reaches `mosquitto_sub` (printed by `-F %P`).
#[test]
fn mosquitto_v5_user_properties_are_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let port = b.addr.port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "5", "-t", "props", "-C", "1", "-W", "10", "-F", "%P|%p"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    mpub(b.addr.port(), &["-V", "5", "-t", "props", "-m", "body", "-D", "publish", "user-property", "team", "storage"]);
    let out = sub.wait_with_output().expect("sub output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "team:storage|body");
}

/// A mosquitto_sub killed with SIGKILL has its will published; one that exits normally not.
#[test]
fn mosquitto_will_on_abnormal_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path());
    let port = b.addr.port().to_string();
    let watcher = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "wills/#", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watcher");
    let will = |id: &str, payload: &str| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-i", id, "-t", "nothing", "--will-topic", "wills/x"])
            .args(["--will-payload", payload, "--will-qos", "1"])
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto_sub with a will")
    };
    let mut polite = will("polite", "polite-will");
    let mut dying = will("dying", "dying-will");
    std::thread::sleep(Duration::from_millis(500));
    // SIGINT: mosquitto_sub sends DISCONNECT, so no will.
    let _ = Command::new("kill").args(["-INT", &polite.id().to_string()]).status();
    let _ = polite.wait();
    std::thread::sleep(Duration::from_millis(300));
    dying.kill().expect("SIGKILL");
    let _ = dying.wait();
    let out = watcher.wait_with_output().expect("watcher output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dying-will");
}
