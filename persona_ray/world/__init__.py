"""The persona world: users whose wanted style is known by construction, to measure personalization.

spec (persona types and shares) -> style (the exact style program) -> synthetic / model-written
responses -> build (pairs, splits) -> measure (preference accuracy, style compliance).
"""
