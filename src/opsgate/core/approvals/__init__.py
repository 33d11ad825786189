"""The approval gate: requests, their state machine, quorum and segregation of duties, step-up."""
