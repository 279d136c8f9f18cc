"""The LIBERO data layer shared by both stages (see ARCHITECTURE.md)."""
