"""Generated protobuf and gRPC code for package `tuneforge.v1` (`make proto`; do not edit by hand).

Importing this package from a source checkout checks that the code matches `proto/tuneforge/v1`;
stale code raises ImportError instead of running.
"""

from tuneforge.contracts import check_fresh
from tuneforge.v1._source_digest import PROTO_SOURCES_SHA256

check_fresh(PROTO_SOURCES_SHA256)
