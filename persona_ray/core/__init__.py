"""Ideas every stage shares: data contracts, storage, shards, settings loading, Ray start-up,
model resolution and reports."""
