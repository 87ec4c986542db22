"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "c58e5dcc232fdd9a9de2f2e7df2ddf2a04b4f1d7f7459b1995463a24271ec6f8"
