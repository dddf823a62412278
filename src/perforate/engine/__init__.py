"""The engine: dendrite layers, candidate statistics and pools, and how they go into a
model."""
