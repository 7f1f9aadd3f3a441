"""The device stage: the backend interface and the buffer operations the scheduler calls."""
