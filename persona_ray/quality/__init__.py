"""Persona quality: PI accuracy and persona preference judged by an LLM, word-saliency diagnostics."""
