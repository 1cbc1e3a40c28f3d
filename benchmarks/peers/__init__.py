"""Peers: minimal agents on other stacks, measured beside jobs-agent."""
