"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "d5bc98b8449127625b5ffd1d5bbdd54f33709fe5d1c1d85a0e8134af08c19353"
