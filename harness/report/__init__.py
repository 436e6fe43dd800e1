"""Tables and documents built from result folders only."""
