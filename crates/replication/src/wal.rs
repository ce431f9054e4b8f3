//! Write-ahead log with group commit and snapshots. Work in progress.
