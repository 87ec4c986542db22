"""Digest of the .proto sources this package was generated from (written by `make proto`)."""

PROTO_SOURCES_SHA256 = "c4732d7f561d996591a18beb8abb14e5ed43785b81a7883bd88c1a8714b3d8fa"
