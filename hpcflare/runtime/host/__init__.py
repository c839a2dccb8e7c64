"""What the server and relays share: round host, round, upload, global model, membership, checkpoints, selection, tracking."""
