"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "9b5f8b95e263d44cd9862b62d4753414366388124f2377b6c763dd6c49c2ab56"
