"""The study: the fair comparison of the milestones, its score cache, and the tables and sentences it
writes into the docs; a student can skip it."""
