"""The catalog: what the services share and read through one package, never each other's tables.

`adapters` (the adapter registry: versions, aliases, lineage), `datasets` (dataset versions as
the other services see them), `suites` (evaluation suites) and `evaluations` (finished runs'
comparisons of a version with its base, what promotion gates read). The service that owns a resource
writes it through these modules; the others only read.
"""
