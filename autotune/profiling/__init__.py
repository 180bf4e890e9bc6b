"""Measuring: the timed loop, statistics, power meters, memory and the machine fingerprint."""
