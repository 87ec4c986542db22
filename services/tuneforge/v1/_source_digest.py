"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "f8a93f2559f162f5dd3d77abe3d0ccc6f29ef33a1840dace418f0e7cff261ae3"
