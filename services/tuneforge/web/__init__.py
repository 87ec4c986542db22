"""The web console: playground, jobs, datasets, evaluations and adapters in a browser (issue #19).

A client of the gRPC services like `tuneforge.cli`: it signs people in with their API key (checked
by the same resolver as the gRPC servers, held in a server-side session), and calls the services
with that key, so each tenant sees only its own resources. `tuneforge up` serves it in the same
process; in a cluster it is a Deployment of its own (`tuneforge console`).
"""

from tuneforge.web.app import ConsoleServer, build_app
from tuneforge.web.backend import ServiceAddresses

__all__ = ["ConsoleServer", "ServiceAddresses", "build_app"]
