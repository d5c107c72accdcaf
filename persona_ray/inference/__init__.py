"""Persona inference (PI): read preference pairs in any supported format, validate them, ask an
LLM for one persona per side, parse and check the personas, write resumable shards."""
