"""`geo3d doctor`: before any GPU hour, say what will fail for the run the same flags/config describe.

Sits on top of the stages (like `cli/command.py` and `geo3d demo`): it imports precompute, train and
features_store lazily, inside its checks, and never builds a model with real weights.
"""
