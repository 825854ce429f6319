"""The sweep machinery around ``posinfo.job.run``, one module per role.

    folders    job and sweep folder names (deterministic: a re-run is a resume)
    status     done or not, status records, failed results, the summary's text
    isolation  each job in a forked child; SIGTERM as an interrupt
    gpus       GPU slots for parallel jobs
    summary    the Hydra callback that prints the summary and sets the exit status
    task       the task function behind sweep.py, and ``cli``

Arrows point one way: task -> summary -> status -> (posinfo.io, posinfo.names);
nothing here imports the job or torch at import time.
"""
