"""The interactive demo: a session that loads checkpoints and samples (session.py), and its web page
(page.py); a student can skip it."""
