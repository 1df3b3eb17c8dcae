"""Presence: an empty shell today; its own issue fills it (see ARCHITECTURE.md)."""
