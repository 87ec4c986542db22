"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "235faf032b9c550606ab30d1601a85587b66358570d5ccca0403d3fee09bbd66"
