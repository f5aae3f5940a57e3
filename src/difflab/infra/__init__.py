"""The machinery: files, runs, processes, failures; a student can skip it."""
