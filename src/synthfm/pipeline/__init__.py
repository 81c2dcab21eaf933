"""The pipeline runner: `synthfm run PIPELINE.yaml` plans every stage's jobs, reuses finished ones, resumes."""
