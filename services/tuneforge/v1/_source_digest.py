"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "f12552bdffb4318faa3e99b6cf182c17060c09df376138da6588598dca4c1df6"
