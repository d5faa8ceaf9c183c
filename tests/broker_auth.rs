//! Authentication and ACL end to end: a password file made with the broker's own
//! `PasswordFile::update` (what `promptmq passwd` does), an ACL file in Mosquitto's syntax,
//! anonymous access off, and a reload that changes the rules for connected clients.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use promptmq_broker::codec::*;
use promptmq_broker::{AuthConfig, PasswordFile};
use promptmq_tests::{drain, Client, ConnectOptions, TestBroker};

const QUIET: Duration = Duration::from_millis(300);

fn login(user: &str, password: &str) -> ConnectOptions {
    ConnectOptions {
        clean: true,
        username: Some(user.into()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        ..Default::default()
    }
}

const ACL: &str = "
topic read public/#
user alice
topic readwrite sensors/#
topic deny sensors/secret/#
pattern write devices/%c/status
pattern read inbox/%u/#
";

fn setup(dir: &Path) -> TestBroker {
    let (pw, acl) = (dir.join("passwd"), dir.join("acl"));
    PasswordFile::update(&pw, "alice", Some(b"wonderland")).unwrap();
    PasswordFile::update(&pw, "bob", Some(b"builder")).unwrap();
    std::fs::write(&acl, ACL).unwrap();
    TestBroker::start_with(dir, |c| {
        c.password_file = Some(pw);
        c.acl_file = Some(acl);
        c.allow_anonymous = false;
    })
}

#[test]
fn passwords_are_checked_and_anonymous_clients_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path());
    for v in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let (_, ack) = Client::connect_with(b.addr, "a", v, login("alice", "wonderland"));
        assert_eq!(ack.code, ReasonCode::Success, "{v:?}");
        let (_, ack) = Client::connect_with(b.addr, "a2", v, login("alice", "looking-glass"));
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword, "{v:?}: wrong password");
        let (_, ack) = Client::connect_with(b.addr, "c", v, login("carol", "wonderland"));
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword, "{v:?}: unknown user");
        let (_, ack) = Client::connect_with(b.addr, "anon", v, ConnectOptions { clean: true, ..Default::default() });
        assert_eq!(ack.code, ReasonCode::NotAuthorized, "{v:?}: anonymous");
    }
}

#[test]
fn the_acl_decides_publish_subscribe_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path());
    let v5 = ProtocolVersion::V5;
    // Alice subscribes on one connection and publishes on another (client id dev1).
    let (mut sub, _) = Client::connect_with(b.addr, "reader", v5, login("alice", "wonderland"));
    let (mut alice, _) = Client::connect_with(b.addr, "dev1", v5, login("alice", "wonderland"));
    // SUBSCRIBE: covered by a read rule or refused (0x87).
    let codes = sub.subscribe_with(
        ["sensors/#", "inbox/alice/#", "inbox/bob/#", "#", "sensors/secret/#"]
            .iter()
            .map(|f| Subscription {
                filter: f.to_string(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            })
            .collect(),
        Properties::default(),
    );
    use ReasonCode::*;
    assert_eq!(codes, vec![GrantedQoS1, GrantedQoS1, NotAuthorized, NotAuthorized, NotAuthorized]);
    // PUBLISH: allowed topics go through; others get 0x87 and are not delivered.
    let (mut bob, _) = Client::connect_with(b.addr, "bob1", v5, login("bob", "builder"));
    assert_eq!(alice.publish("sensors/t1", "21", QoS::AtLeastOnce, false), Success);
    assert_eq!(alice.publish("devices/dev1/status", "up", QoS::AtLeastOnce, false), Success, "pattern with %c");
    assert_eq!(alice.publish("devices/dev2/status", "up", QoS::AtLeastOnce, false), NotAuthorized);
    assert_eq!(alice.publish("sensors/secret/k", "x", QoS::AtLeastOnce, false), NotAuthorized, "deny wins");
    assert_eq!(bob.publish("sensors/t2", "from bob", QoS::AtLeastOnce, false), NotAuthorized, "bob has no rules");
    let got: Vec<String> = drain(&mut sub, QUIET).into_iter().map(|p| p.topic.to_string()).collect();
    assert_eq!(got, vec!["sensors/t1"], "only the allowed publish reached the subscriber");
    // 3.1.1 has no reason codes: a refused QoS 1 PUBLISH is acknowledged and dropped.
    let (mut old, _) = Client::connect_with(b.addr, "old", ProtocolVersion::V3_1_1, login("bob", "builder"));
    assert_eq!(old.publish("sensors/t3", "x", QoS::AtLeastOnce, false), Success);
    assert!(sub.next_publish(QUIET).is_none());
}

#[test]
fn deny_rules_filter_deliveries_inside_an_allowed_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let (pw, acl) = (dir.path().join("passwd"), dir.path().join("acl"));
    PasswordFile::update(&pw, "alice", Some(b"wonderland")).unwrap();
    // The writer may publish anywhere under sensors/, the reader may not see secret/.
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite sensors/#\ntopic deny sensors/secret/#\nuser writer\ntopic write sensors/#\n",
    )
    .unwrap();
    PasswordFile::update(&pw, "writer", Some(b"pen")).unwrap();
    let b = TestBroker::start_with(dir.path(), |c| {
        c.password_file = Some(pw);
        c.acl_file = Some(acl);
    });
    let v5 = ProtocolVersion::V5;
    let (mut alice, _) = Client::connect_with(b.addr, "reader", v5, login("alice", "wonderland"));
    alice.subscribe("sensors/#", QoS::AtLeastOnce);
    let (mut w, _) = Client::connect_with(b.addr, "writer", v5, login("writer", "pen"));
    for t in ["sensors/a", "sensors/secret/b", "sensors/c"] {
        assert_eq!(w.publish(t, "x", QoS::AtLeastOnce, false), ReasonCode::Success);
    }
    let got: Vec<String> = drain(&mut alice, QUIET).into_iter().map(|p| p.topic.to_string()).collect();
    assert_eq!(got, vec!["sensors/a", "sensors/c"]);
}

#[test]
fn a_reload_changes_the_rules_of_connected_clients() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path());
    let (mut alice, _) = Client::connect_with(b.addr, "dev1", ProtocolVersion::V5, login("alice", "wonderland"));
    assert_eq!(alice.publish("news/today", "x", QoS::AtLeastOnce, false), ReasonCode::NotAuthorized);
    std::fs::write(dir.path().join("acl"), format!("{ACL}\nuser alice\ntopic write news/#\n")).unwrap();
    let auth = AuthConfig::load(false, Some(&dir.path().join("passwd")), Some(&dir.path().join("acl"))).unwrap();
    b.broker().reload_auth(auth);
    assert_eq!(alice.publish("news/today", "x", QoS::AtLeastOnce, false), ReasonCode::Success, "same connection");
    // A will the ACL forbids refuses the CONNECT.
    let will = Will {
        topic: "forbidden/will".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    };
    let (_, ack) = Client::connect_with(
        b.addr,
        "w",
        ProtocolVersion::V5,
        ConnectOptions { will: Some(will), ..login("alice", "wonderland") },
    );
    assert_eq!(ack.code, ReasonCode::NotAuthorized);
}
