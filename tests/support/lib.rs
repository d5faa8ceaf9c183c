//! Helpers shared by PromptMQ's end-to-end tests.
