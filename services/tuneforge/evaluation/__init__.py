"""EvaluationService: suites, runs and base-vs-adapter comparison reports."""
