"""How this process runs: the device and mixed precision, seeds, CPU threads, memory.

Library code only reads these settings; changing them for the whole process (the allocator, the garbage
collector, the thread policy, warning filters) is `process.tune_process`'s job, called by the command line.
"""
