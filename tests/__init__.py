"""bulklq tests (trial)."""
