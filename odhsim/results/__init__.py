"""Results: tidy per-request / per-replica / per-bucket / per-event tables plus a summary."""
