"""Model implementations the engine runs natively."""
