"""What the engine said, kept: the poller, the event follower, disk usage, the state file."""
