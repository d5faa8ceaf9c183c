//! Offline tools
