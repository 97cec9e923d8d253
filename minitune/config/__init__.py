"""A run's settings: the sections (sections.py), the task defaults (defaults.py), flags and TOML files in and
config.json out (load.py), and every check (validate.py). Kept empty of imports, so the code that reads one section
imports sections.py alone."""
