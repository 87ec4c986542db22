"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "27506f0d0d85d86002a1bb9490df39d54f9370a76223c889a323ba62b2f1bc8e"
