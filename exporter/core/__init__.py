"""The values and small services every layer shares: the snapshot, units, matchers, clocks, schedules,
logging, the allocator and the engine address. Nothing here imports from the layers above."""
