"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "2592cb169ecfde320dde0e861cb53949a679a3f30cd1128c87e611a0203ec9bd"
