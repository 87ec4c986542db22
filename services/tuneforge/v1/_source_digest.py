"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "96db0fdaa20d12a7e1b523c5cff47ae715ef1c9127f1cd5a8ae70eb68dc75dfc"
