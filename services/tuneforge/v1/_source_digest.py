"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "00a395328a9d54569a5ed56d89bf667057cf9fe1eae529c743dfebba506e38ed"
