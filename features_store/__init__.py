"""features_store package."""
