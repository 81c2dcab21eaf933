"""The training core below every trainer: optimiser config and schedules, parameter groups, RNG and state files."""
