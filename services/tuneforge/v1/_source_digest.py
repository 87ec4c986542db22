"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "f5c088408efbb2f5eed528f2aad107cde9cce1fecef0f89e31083d886fe6f84e"
