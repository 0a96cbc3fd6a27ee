"""Training: the loop and its step, the freeze plan, optimizer and schedules, the frozen prefix and its
feature cache, resume, calibration, the run folder and its curves. `loop.fit` is the entry."""
