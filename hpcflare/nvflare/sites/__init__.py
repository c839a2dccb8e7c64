"""Site scripts hpcflare ships for NVFlare recipes that take no training script (copied into a job's app/)."""
