"""TrainingService and AdapterService: fine-tuning jobs on Ray and the adapter registry."""
