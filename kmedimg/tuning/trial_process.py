"""One tuning trial in its own process: `python -m kmedimg.tuning.trial_process CONFIG.yaml`.

TensorFlow keeps the traced graphs of every model a process has trained (they are held
from C++, out of reach of `gc`), so a long search in one process grows by megabytes per
trial whatever Python releases. A trial in a child process returns all of it to the
system when it exits. The child dies with its parent (a killed search leaves no
orphan trial training on).
"""

import os
import signal
import sys
import threading
import time

from kmedimg import training
from kmedimg.config import load_config
from kmedimg.tuning.trials import PARENT_ENV


def die_with_parent():
    """Exit when the parent process goes away (prctl on Linux, and polling).

    The parent passes its pid in `KMEDIMG_TRIAL_PARENT`: it may have died while this
    process was still importing (TensorFlow, Keras, kmedimg), before it could ask to be
    told.
    """
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m kmedimg.tuning.trial_process CONFIG.yaml", file=sys.stderr)
        return 2
    die_with_parent()
    training.run(load_config(argv[0]), progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
