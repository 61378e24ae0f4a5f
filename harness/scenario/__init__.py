"""Scenarios: the sites, the ops, the guest image they build to, and the shipped catalogue."""
