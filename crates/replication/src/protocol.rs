//! Primary-backup replica protocol (pure state machine). Work in progress.
