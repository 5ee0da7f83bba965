"""Jobs: placing them (requester), running them (provider), and the task stream between."""
