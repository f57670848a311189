"""Recovery wiring: the consistency checks on index artifacts, the restore jobs, the drill."""
