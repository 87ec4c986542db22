"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "70c053453d77645192ee073c8af586a4f6f18844a9c1af1bfec4e5edf4f08543"
