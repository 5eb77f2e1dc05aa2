"""pytest11 entry point of mechtest (options, claim collection and fixtures are added as they land)."""
