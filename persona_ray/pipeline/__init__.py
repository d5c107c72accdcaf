"""The whole pipeline as one resumable command (run.py), what it shows while it runs
(display.py) and the report it ends with (showcase.py)."""
