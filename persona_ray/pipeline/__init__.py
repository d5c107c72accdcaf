"""The whole pipeline as one resumable command (run.py) and the report it ends with (showcase.py);
what it shows while it runs is core/terminal.py."""
