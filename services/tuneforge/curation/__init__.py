"""DatasetService: raw instruction files in, curated dataset versions out."""
