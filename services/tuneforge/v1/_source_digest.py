"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "554713ac0ce350d8a26a09ad4abee8b7f893ee6502aa100489e21f04de2e4d2c"
