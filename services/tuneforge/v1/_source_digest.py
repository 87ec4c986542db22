"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "88b529b1adb6a4268cd31097b4fd33d092751b1c590c3784d48accb8cb8bd4e3"
