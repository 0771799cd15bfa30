"""Training embeddings and hypernetworks on the serving model (issue 7): inputs, schedules, trainers, jobs."""
