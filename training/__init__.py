"""Training, evaluation, export and the `defects` command line."""

import time as _time

# When the product began to load in this process (the command line imports this package first):
# a command's own start-up, shown beside its work where that start-up is seconds.
LOADING_SINCE = _time.perf_counter()
