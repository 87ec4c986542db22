"""Plumbing every Tuneforge service shares: settings, errors, auth, gRPC runtime, logging, metrics."""
