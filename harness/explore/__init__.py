"""Exploring schedules: strategies over the one decision stream, exhaustive search, shrinking."""
