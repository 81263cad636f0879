"""Trunk gateway health (SPEC O-3): OPTIONS keep-alives, their state machine and edge."""
