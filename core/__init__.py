"""The core every layer stands on: config (one builder), errors and exit codes, provenance, preemption signals,
device and compute dtype, storage faults, JSON helpers, the LIBERO simulator setup. Imports no other geo3d layer."""
