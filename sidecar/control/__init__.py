"""Acting on the numbers: the decision loop that runs the pure policy each window and writes through an
actuator, and fleet mode's Prometheus source (docs/policy.md)."""
