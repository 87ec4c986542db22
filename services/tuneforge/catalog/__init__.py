"""The catalog: what the services share and read through one package, never each other's tables.

`adapters` (the adapter registry: versions, aliases, lineage), `datasets` (dataset versions as
the other services see them) and `suites` (evaluation suites). The service that owns a resource
writes it through these modules; the others only read.
"""
