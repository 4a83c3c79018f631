"""Client-side view of person-service for Python nameko callers (tests)."""
