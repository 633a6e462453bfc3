"""Process exit codes shared by every `lta` command (features/ is imported by both stages).

    0  success
    1  runtime failure (bad data past a threshold, full disk, a locked shard, ...)
    2  usage error (bad key=value, unknown name)
    75 EXIT_INTERRUPTED: stopped on SIGTERM / SIGINT after finishing or abandoning the current unit;
       everything written is valid and a re-run (or a SLURM requeue) resumes where it stopped.

75 is `EX_TEMPFAIL` of BSD sysexits.h ("temporary failure, retry later"). It is distinct from 143 / 130,
which the shell reports when a process is killed by SIGTERM / SIGINT without handling it.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 75
