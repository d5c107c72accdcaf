"""Persona-augmented datasets: personas joined to their pairs, cut into deterministic splits."""
