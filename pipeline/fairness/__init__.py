"""Audit statistics, demographics backends, and the demographics and audit stages."""
