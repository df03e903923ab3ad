"""Faust agents and the plain logic they call (:mod:`calsync.agents.service`)."""
