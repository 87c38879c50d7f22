"""Loaders for the custom-local models: InstantID, MuseTalk 1.5, XTTS-v2, and their face analysis."""
