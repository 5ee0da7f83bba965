"""Jobs: what a provider runs and a requester places (placement, leases, runs, gangs)."""
