"""Provisioning (CA + startup kits), mutual TLS, and per-site policy."""
