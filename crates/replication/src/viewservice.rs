//! View service (epoch authority), pure state machine. Work in progress.
