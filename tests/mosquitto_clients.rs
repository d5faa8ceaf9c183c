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
