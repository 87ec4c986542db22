"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "1b5c2a052630e7ae0a60e9d40009233ab2a69bbe426615e0a48cc9759f31704e"
