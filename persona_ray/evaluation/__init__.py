"""Evaluation: tailored generation per persona source and the pairwise judge (win rates, ΔPQ)."""
