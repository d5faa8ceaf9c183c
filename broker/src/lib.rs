//! `promptmq-broker`: the MQTT frontend of PromptMQ. So far: the MQTT 3.1 / 3.1.1 / 5.0
//! codec ([`codec`]). Sessions, routing and listeners build on it and on `promptmq-wal`.

#![warn(missing_docs)]

pub mod codec;
