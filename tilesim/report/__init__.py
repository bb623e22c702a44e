"""Summaries, JSON/CSV and plots of runs."""
