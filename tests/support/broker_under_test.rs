//! The broker as a separate process, for tests that kill it (`kill -9`) and restart it.
//! Usage: `broker-under-test DATA_DIR [always|interval|none]` — listens on 127.0.0.1 on a
//! free port and prints `LISTENING <port>` once it accepts connections.

use promptmq_broker::{Broker, BrokerConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: broker-under-test DATA_DIR [always|interval|none]");
        std::process::exit(2);
    };
    let sync = promptmq_tests::sync_mode_arg(args.next().as_deref()).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut cfg = BrokerConfig::new("127.0.0.1:0".parse().expect("addr"), dir);
        cfg.sync = sync;
        // Two shards whatever the machine: session records and messages then land in
        // different shard logs, whose syncs are independent — the harder case for a kill.
        cfg.storage.shards = Some(2);
        // Small segments: a kill loop then also lands between rolls, while a spare segment
        // is being made, and in segments made from spares (zero-filled ahead of use).
        cfg.storage.segment_bytes = 1 << 20;
        cfg.storage.preallocate = true;
        let broker = match Broker::start(cfg).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("start failed: {e}");
                std::process::exit(1);
            }
        };
        println!("LISTENING {}", broker.local_addr().port());
        let _ = tokio::signal::ctrl_c().await;
        broker.shutdown().await;
    });
}
