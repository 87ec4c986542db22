"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "531dcbdf14bec77bd63f56ce48f1ff102b9fcd4e71ce5b2571bc8e220b742821"
