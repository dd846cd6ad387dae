"""CPU schedules, one file per kernel family; rules.py holds the ordered rule list and `schedule_cpu`."""
