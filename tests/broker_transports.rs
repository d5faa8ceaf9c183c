//! TLS, WebSocket and WebSocket-over-TLS listeners end to end: certificates are made in the
//! test (rcgen), clients are tokio-rustls and tokio-tungstenite, the MQTT packets are the
//! broker's own codec. A plain TCP client publishes; the other transports receive.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use promptmq_broker::codec::*;
use promptmq_broker::{ListenerConfig, ListenerKind, TlsFiles};
use promptmq_tests::{Client, TestBroker};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;

const T: Duration = Duration::from_secs(5);

/// A CA, a server certificate for 127.0.0.1 / localhost signed by it, and a client
/// certificate (CN "device-7") signed by it, written as PEM files under `dir`.
struct Pki {
    ca_pem: String,
    server: TlsFiles,
    client_cert_pem: String,
    client_key_pem: String,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "PromptMQ test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, "device-7");
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let ca_pem = ca.pem();
    Pki {
        server: TlsFiles {
            cert: write("server.pem", &server.pem()),
            key: write("server.key", &server_key.serialize_pem()),
            client_ca: Some(write("ca.pem", &ca_pem)),
            require_client_cert: false,
            use_identity_as_username: false,
        },
        ca_pem,
        client_cert_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

fn tls_client(pki: &Pki, with_cert: bool) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_cert {
        let cert = CertificateDer::from_pem_slice(pki.client_cert_pem.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes()).unwrap();
        b.with_client_auth_cert(vec![cert], key).unwrap()
    } else {
        b.with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A minimal async MQTT 5 client over any byte stream.
struct Mqtt<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Mqtt<S> {
    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        encode(&p, ProtocolVersion::V5, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Ok(Some(p)) = decode(&mut self.buf, Some(ProtocolVersion::V5), 1 << 20) {
                return Some(p);
            }
            match tokio::time::timeout(T, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// CONNECT, then SUBSCRIBE to `filter`; panics unless both succeed.
    async fn connect_and_subscribe(io: S, id: &str, filter: &str) -> Mqtt<S> {
        let mut m = Mqtt { io, buf: BytesMut::new() };
        m.send(Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            properties: Properties::default(),
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })))
        .await;
        match m.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.code, ReasonCode::Success),
            other => panic!("CONNACK expected, got {other:?}"),
        }
        m.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: filter.into(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }],
        }))
        .await;
        match m.recv().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.codes, vec![ReasonCode::GrantedQoS1]),
            other => panic!("SUBACK expected, got {other:?}"),
        }
        m
    }

    async fn expect_publish(&mut self, topic: &str, payload: &[u8]) {
        match self.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!((p.topic.as_str(), &p.payload[..]), (topic, payload));
                if let Some(id) = p.packet_id {
                    self.send(Packet::PubAck(PubResp::ok(id))).await;
                }
            }
            other => panic!("PUBLISH expected, got {other:?}"),
        }
    }
}

fn broker_with(dir: &Path, kinds: Vec<ListenerKind>) -> TestBroker {
    TestBroker::start_with(dir, move |c| {
        c.listeners = kinds
            .into_iter()
            .map(|kind| ListenerConfig { bind: "127.0.0.1:0".parse().unwrap(), kind, max_connections: None })
            .collect();
    })
}

fn addr_of(b: &TestBroker, kind: &str) -> SocketAddr {
    b.broker().listeners().iter().find(|(k, _)| *k == kind).map(|(_, a)| *a).expect("listener")
}

fn publish_plain(b: &TestBroker, topic: &str, payload: &str) {
    let mut p = Client::connect(b.addr, "plain-pub", ProtocolVersion::V5);
    assert_eq!(p.publish(topic, payload.to_string(), QoS::AtLeastOnce, false), ReasonCode::Success);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn tls_listener_with_optional_and_required_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut required = pki.server.clone();
    required.require_client_cert = true;
    let b = broker_with(dir.path(), vec![ListenerKind::Tls(pki.server.clone()), ListenerKind::Tls(required)]);
    let (optional_addr, required_addr) = (b.broker().listeners()[1].1, b.broker().listeners()[2].1);
    let rt = runtime();
    let name = ServerName::try_from("localhost").unwrap();
    // Optional client certificate: a client without one gets in.
    let mut sub = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(optional_addr).await.unwrap();
        let tls = tls_client(&pki, false).connect(name.clone(), tcp).await.expect("TLS handshake");
        Mqtt::connect_and_subscribe(tls, "tls-sub", "secure/#").await
    });
    publish_plain(&b, "secure/a", "over tls");
    rt.block_on(sub.expect_publish("secure/a", b"over tls"));
    // Required: with a certificate signed by the CA it works ...
    let mut with_cert = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(required_addr).await.unwrap();
        let tls = tls_client(&pki, true).connect(name.clone(), tcp).await.expect("mutual TLS handshake");
        Mqtt::connect_and_subscribe(tls, "tls-mutual", "secure/#").await
    });
    publish_plain(&b, "secure/b", "mutual");
    rt.block_on(with_cert.expect_publish("secure/b", b"mutual"));
    // ... without one the broker refuses the connection.
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(required_addr).await.unwrap();
        let refused = match tls_client(&pki, false).connect(name.clone(), tcp).await {
            Err(_) => true,
            // TLS 1.3 reports the missing certificate on the first read.
            Ok(mut tls) => {
                let _ = tls.write_all(b"\x10\x00").await;
                let mut b = [0u8; 8];
                !matches!(tokio::time::timeout(T, tls.read(&mut b)).await, Ok(Ok(n)) if n > 0)
            }
        };
        assert!(refused, "no client certificate, no connection");
    });
    // A plain-TCP client on the TLS port gets nothing but a closed socket.
    let mut plain = std::net::TcpStream::connect(optional_addr).unwrap();
    use std::io::{Read, Write};
    plain.set_read_timeout(Some(T)).unwrap();
    let _ =
        plain.write_all(&[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x01, b'x']);
    let mut b1 = [0u8; 16];
    assert!(!matches!(plain.read(&mut b1), Ok(n) if n >= 4 && b1[0] == 0x20), "no CONNACK over plain TCP");
}

#[test]
fn a_bad_certificate_file_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let cfg_dir = dir.path().to_path_buf();
    let rt = runtime();
    let mut cfg = promptmq_broker::BrokerConfig::new("127.0.0.1:0".parse().unwrap(), &cfg_dir);
    cfg.listeners.push(ListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        max_connections: None,
        kind: ListenerKind::Tls(TlsFiles {
            cert: missing.clone(),
            key: missing.clone(),
            client_ca: None,
            require_client_cert: false,
            use_identity_as_username: false,
        }),
    });
    let err = rt.block_on(promptmq_broker::Broker::start(cfg)).err().expect("refused");
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[test]
fn websocket_listener_with_mqtt_subprotocol_and_packets_across_frames() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), vec![ListenerKind::Ws { path: "/mqtt".into() }]);
    let addr = addr_of(&b, "ws");
    let rt = runtime();
    let mut ws = rt.block_on(async {
        let mut req = format!("ws://{addr}/mqtt").into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("WebSocket handshake");
        assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap()), Some("mqtt"));
        ws
    });
    // CONNECT split over two binary frames, SUBSCRIBE in the same frame as its tail.
    let mut connect = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            properties: Properties::default(),
            client_id: "ws-sub".into(),
            will: None,
            username: None,
            password: None,
        })),
        ProtocolVersion::V5,
        &mut connect,
    )
    .unwrap();
    let mut subscribe = BytesMut::new();
    encode(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: "web/#".into(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }],
        }),
        ProtocolVersion::V5,
        &mut subscribe,
    )
    .unwrap();
    let (head, tail) = connect.split_at(5);
    let mut second = tail.to_vec();
    second.extend_from_slice(&subscribe);
    let mut got = BytesMut::new();
    let next = |ws: &mut tokio_tungstenite::WebSocketStream<_>, got: &mut BytesMut| {
        rt.block_on(async {
            loop {
                if let Ok(Some(p)) = decode(got, Some(ProtocolVersion::V5), 1 << 20) {
                    return p;
                }
                match tokio::time::timeout(T, ws.next()).await {
                    Ok(Some(Ok(Ws::Binary(b)))) => got.extend_from_slice(&b),
                    other => panic!("binary frame expected, got {other:?}"),
                }
            }
        })
    };
    rt.block_on(async {
        ws.send(Ws::Binary(head.to_vec().into())).await.unwrap();
        ws.send(Ws::Binary(second.into())).await.unwrap();
    });
    assert!(matches!(next(&mut ws, &mut got), Packet::ConnAck(a) if a.code == ReasonCode::Success));
    assert!(matches!(next(&mut ws, &mut got), Packet::SubAck(_)));
    publish_plain(&b, "web/x", "over websocket");
    match next(&mut ws, &mut got) {
        Packet::Publish(p) => assert_eq!((p.topic.as_str(), &p.payload[..]), ("web/x", &b"over websocket"[..])),
        other => panic!("{other:?}"),
    }
    // A wrong path is refused during the handshake.
    rt.block_on(async {
        let err = tokio_tungstenite::connect_async(format!("ws://{addr}/elsewhere")).await.expect_err("refused");
        assert!(err.to_string().contains("404"), "{err}");
    });
}

#[test]
fn websocket_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let b = broker_with(dir.path(), vec![ListenerKind::Wss { path: "/mqtt".into(), tls: pki.server.clone() }]);
    let addr = addr_of(&b, "wss");
    let rt = runtime();
    let mut sub = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tls_client(&pki, false).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let mut req = format!("wss://localhost:{}/mqtt", addr.port()).into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(req, tls).await.expect("WSS handshake");
        // Bytes over frames, for the little client.
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let (mut r, mut w) = tokio::io::split(b);
            let up = async {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 || tx.send(Ws::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            };
            let down = async {
                while let Some(Ok(Ws::Binary(m))) = rx.next().await {
                    if w.write_all(&m).await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! { _ = up => {}, _ = down => {} }
        });
        Mqtt::connect_and_subscribe(a, "wss-sub", "wss/#").await
    });
    publish_plain(&b, "wss/a", "secure websocket");
    rt.block_on(sub.expect_publish("wss/a", b"secure websocket"));
}

/// With `use_identity_as_username` the verified client certificate's CN is the username:
/// no password, and the ACL rules of that user apply.
#[test]
fn tls_client_certificate_cn_as_username() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user device-7\ntopic readwrite dev7/#\n").unwrap();
    let mut files = pki.server.clone();
    files.require_client_cert = true;
    files.use_identity_as_username = true;
    let b = TestBroker::start_with(dir.path(), move |c| {
        c.listeners = vec![ListenerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            kind: ListenerKind::Tls(files),
            max_connections: None,
        }];
        c.allow_anonymous = false;
        c.acl_file = Some(acl);
    });
    let addr = addr_of(&b, "tls");
    let rt = runtime();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tls_client(&pki, true).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        // No username in CONNECT: the certificate says device-7, which may use dev7/#.
        let mut m = Mqtt::connect_and_subscribe(tls, "dev7", "dev7/#").await;
        m.send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "dev7/state".into(),
            packet_id: Some(9),
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"on"),
        }))
        .await;
        let mut acked = false;
        let mut delivered = false;
        while !(acked && delivered) {
            match m.recv().await {
                Some(Packet::PubAck(a)) => {
                    assert_eq!(a.code, ReasonCode::Success);
                    acked = true;
                }
                Some(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], b"on");
                    delivered = true;
                }
                other => panic!("{other:?}"),
            }
        }
        m.send(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "elsewhere".into(),
            packet_id: Some(10),
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"x"),
        }))
        .await;
        match m.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.code, ReasonCode::NotAuthorized, "device-7's ACL applies"),
            other => panic!("{other:?}"),
        }
    });
}
