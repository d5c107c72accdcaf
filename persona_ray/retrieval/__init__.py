"""Persona retrieval: a ColBERT (PLAID) index of training prompts and the searcher over it."""
