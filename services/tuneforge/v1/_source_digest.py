"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "52909c5e8f0db29b04eb53892ad29bdc00adf8184ef9d90cb9152fcdf0d94a85"
