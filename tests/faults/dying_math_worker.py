"""A math-verify worker that is killed (SIGKILL) under its first item, then behaves.

Speaks the real worker's protocol (`r1/rewards/_math_worker.py`). While the file named by
``DYING_WORKER_MARKER`` does not exist it announces itself ready, reads one request, creates
the file and kills itself, as an operator or the OOM killer would mid-batch; with
``DYING_WORKER_ALWAYS=1`` it dies under every item. Otherwise it runs the real worker.
"""

import os
import runpy
import signal
import sys

marker = os.environ["DYING_WORKER_MARKER"]
if os.environ.get("DYING_WORKER_ALWAYS") == "1" or not os.path.exists(marker):
    print('{"ready": true}', flush=True)
    sys.stdin.readline()
    open(marker, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
real = os.path.join(os.path.dirname(__file__), "..", "..", "r1", "rewards", "_math_worker.py")
runpy.run_path(real, run_name="__main__")
