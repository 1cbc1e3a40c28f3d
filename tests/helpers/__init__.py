"""Shared pieces for the reliability and security tests (fuzzing, hostile input, disk faults)."""
