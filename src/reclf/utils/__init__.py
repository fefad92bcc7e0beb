"""Small shared helpers: atomic file writes, seeding, hashing, region maps."""
