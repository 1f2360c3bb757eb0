"""Benchmarks: scripts that print the figures the README quotes (`python bench/NAME.py --help`)."""
