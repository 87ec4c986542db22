"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "bc9ff54b5904b7495cc6659c5cbe0f98d4eaaaff169f83e62a066dcf3810b6c9"
