"""SLURM batch jobs for geo3d: templates rendered from the resolved config, submission records."""
