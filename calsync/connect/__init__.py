"""Connecting calendars: OAuth consent flows and the state they keep while they run."""
