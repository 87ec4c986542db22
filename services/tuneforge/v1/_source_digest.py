"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "750d2d1d0c629287f4f0b85062eb139e5a2d9cc6d30b9fddefd3912f6aa81838"
