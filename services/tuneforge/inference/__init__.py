"""InferenceService: many tenants' adapters on one shared base model."""
